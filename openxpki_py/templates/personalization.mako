<%inherit file="base.mako"/>
<%block name="page_title">Personalize your smartcard</%block>
<%
  step_marks = {"done": "✓", "active": "…", "waiting": "·", "failed": "✗"}
%>
<h1>Personalize your smartcard</h1>
<div id="personalization" data-phase="${progress.phase}" data-state="${workflow.state}"
     data-version="${workflow.version}" data-status-url="${base_url}/status" data-page-url="${page_url}">
<p id="status-message" class="status status-${progress.phase}" role="status">${progress.message}</p>
% if message:
<p class="error-message">${message}</p>
% endif

% if code_offered and code and progress.phase != "waiting_for_card":
  <section aria-labelledby="code-heading">
    <h2 id="code-heading">A new enrollment code</h2>
    <p class="enrollment-code"><code id="enrollment-code">${code}</code></p>
    <p>Run the agent again with it; it continues with the same card:</p>
    <pre id="agent-command">${agent_command}</pre>
  </section>
% endif
% if progress.phase == "waiting_for_card":
  % if code:
  <section aria-labelledby="code-heading">
    <h2 id="code-heading">Your enrollment code</h2>
    <p class="enrollment-code"><code id="enrollment-code">${code}</code></p>
    <p>It works once, for this personalization only, for ${code_minutes} minutes.
       Insert your card, then run the token agent on this computer:</p>
    <pre id="agent-command">${agent_command}</pre>
    <p>This page continues by itself when the agent has found your card.</p>
  </section>
  % else:
  <p>Insert your card. Then get a one-time code for the token agent:</p>
  % endif
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
    % if "confirm_token" in actions:
    <button type="submit" name="action" value="confirm_token" id="confirm-card">Yes, this is my card</button>
    % endif
    % if "reject_token" in actions:
    <button type="submit" name="action" value="reject_token">No, not this card</button>
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
