<%inherit file="base.mako"/>
<%block name="page_title">Personalize your smartcard</%block>
<%
  step_marks = {"done": "✓", "active": "…", "waiting": "·", "failed": "✗", "skipped": "–"}
%>
<h1>Personalize your smartcard</h1>
<div id="personalization" data-phase="${progress.phase}" data-state="${workflow.state}"
     data-version="${workflow.version}" data-agent="${agent_marker}" data-status-url="${base_url}/status"
     data-page-url="${page_url}"
% if code:
     data-discard-url="${base_url}/code/discard" data-csrf="${csrf_token}"
% endif
     >
<p id="status-message" class="status status-${progress.phase}" role="status">${progress.message}</p>
% if message:
<p class="error-message">${message}</p>
% endif

<%def name="code_section(heading, intro)">
  <section aria-labelledby="code-heading" id="code-section">
    <h2 id="code-heading">${heading}</h2>
    <p>${intro} It works once, for this personalization only, for ${code_minutes} minutes, and ends when
       you leave this page.</p>
    <p><a id="agent-link" class="button" href="${agent_link}">Open the token agent</a>
       (once per computer: <code>openxpki-py-token register-handler --server ${server_url}</code>)</p>
    <details id="code-details">
      <summary>Type the code instead</summary>
      <p class="enrollment-code"><code id="enrollment-code">${code}</code></p>
      <pre id="agent-command">${agent_command}</pre>
      <p>Nobody else may see this code: whoever uses it first connects an agent to your personalization.</p>
    </details>
    <p>This page continues by itself when the agent has connected.</p>
  </section>
</%def>
% if code_offered and code and progress.phase != "waiting_for_card":
  ${code_section("A new enrollment code", "Run the agent again; it continues with the same card.")}
% endif
% if progress.phase == "waiting_for_card":
  % if code:
  ${code_section("Your enrollment code", "Insert your card, then start the token agent on this computer.")}
  % elif not pairing:
  <p>Insert your card. Then get a one-time code for the token agent:</p>
  % endif
% endif

% if pairing:
  <section aria-labelledby="pairing-heading" id="pairing" data-agent="${pairing.credential_id}">
    % if progress.phase == "confirm_card":
    <h2 id="pairing-heading">Is this your card, and does your agent show this phrase?</h2>
    % elif progress.phase == "waiting_for_card":
    <h2 id="pairing-heading">An agent connected</h2>
    % else:
    <h2 id="pairing-heading">A new agent run connected: is it yours?</h2>
    % endif
    <p class="pairing-phrase"><strong id="pairing-phrase">${pairing.phrase}</strong></p>
    <p>Your token agent prints a phrase when it starts. Confirm only if it shows exactly these words.
       If your agent shows other words or none (for example "code already used"), someone else used your
       code: press "No".</p>
  </section>
% endif

% if code_offered:
  <form method="post" action="${base_url}/code" class="inline">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <input type="hidden" name="mode" value="${mode}">
    % if progress.phase == "waiting_for_card":
    <button type="submit" id="get-code">${"Get a new code" if code else "Show enrollment code"}</button>
    % else:
    <p>Did the agent stop? <button type="submit" id="get-code">Get a new code for the agent</button></p>
    % endif
  </form>
% endif

% if progress.phase == "confirm_card" and progress.token:
  <dl class="facts" id="card">
    <dt>Serial number</dt><dd id="card-serial">${progress.token["serial"]}</dd>
    <dt>Model</dt><dd id="card-model">${progress.token.get("model") or "unknown"}</dd>
    <dt>Manufacturer</dt><dd>${progress.token.get("manufacturer") or "unknown"}</dd>
  </dl>
% endif

% if progress.token and progress.token.get("temporary"):
  <p class="status" id="temporary-card">A temporary card: it stands in for your card
    ${progress.token["temporary"]["stands_in_for"]}, which is on hold while it is away. Its certificates are valid
    for ${progress.token["temporary"]["validity_days"]} days; give it back to the help desk with your card.</p>
% endif

% if progress.plan:
  <section aria-labelledby="plan-heading" id="card-plan">
    <h2 id="plan-heading">What this card will get</h2>
    <ul class="steps">
    % for step in progress.plan:
      <li class="step-${step.status}" data-status="${step.status}"><span aria-hidden="true">${step_marks[step.status]}</span>
        ${step.label}<span class="visually-hidden"> (${step.status})</span></li>
    % endfor
    </ul>
  </section>
% endif

% if progress.steps:
  <ol class="steps" id="steps">
  % for step in progress.steps:
    <li class="step-${step.status}"><span aria-hidden="true">${step_marks[step.status]}</span> ${step.label}
      <span class="visually-hidden">(${step.status})</span></li>
  % endfor
  </ol>
% endif

% if progress.phase == "done":
  <table class="certificates" id="certificates">
    <thead><tr><th>Certificate</th><th>Subject</th><th>Serial</th><th>Valid</th><th></th></tr></thead>
    <tbody>
    % for cert in certificates:
      <tr class="certificate" data-type="${cert.cert_type}" data-serial="${cert.serial}">
        <td>${cert.cert_type}${" (kept)" if cert.status == "kept" else ""}</td>
        <td>${cert.subject}</td>
        <td><code>${cert.serial}</code></td>
        <td>${cert.not_before.strftime("%Y-%m-%d")} – ${cert.not_after.strftime("%Y-%m-%d")}</td>
        <td><a href="${base_url}/certificate/${cert.serial}.pem">Download</a></td>
      </tr>
    % endfor
    </tbody>
  </table>
% endif

% if actions:
  <form method="post" action="${base_url}/action" class="actions">
    % if "withdraw" in actions:
    <p>An RA Operator has to approve this certificate first. If you do not want to wait:</p>
    % endif
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <input type="hidden" name="version" value="${workflow.version}">
    <input type="hidden" name="mode" value="${mode}">
    % if pairing:
    <input type="hidden" name="agent" value="${pairing.credential_id}">
    % endif
    % if "confirm_token" in actions:
    <button type="submit" name="action" value="confirm_token" id="confirm-card">Yes, my card and my agent's
      phrase</button>
    % endif
    % if "reject_token" in actions:
    <button type="submit" name="action" value="reject_token" id="reject-card">No, not this card or not this
      phrase</button>
    % endif
    % if "confirm_agent" in actions:
    <button type="submit" name="action" value="confirm_agent" id="confirm-agent">Yes, my agent shows this
      phrase</button>
    % endif
    % if "reject_agent" in actions:
    <button type="submit" name="action" value="reject_agent" id="reject-agent">No, that is not my agent</button>
    % endif
    % if "cancel" in actions:
    <button type="submit" name="action" value="cancel" id="cancel">Cancel personalization</button>
    % endif
    % if "withdraw" in actions:
    <button type="submit" name="action" value="withdraw" id="withdraw">Withdraw the request and stop</button>
    % endif
  </form>
% endif

% if progress.phase not in ("done", "failed"):
  <noscript><p><a href="${page_url}">Refresh</a> to see the progress.</p></noscript>
  <script src="${url_for('static', filename='personalization.js')}"></script>
% endif
</div>
