<%inherit file="../base.mako"/>
<%namespace name="parts" file="_parts.mako"/>
<%block name="page_title">Card ${card["serial"]}</%block>
<h1>Card ${card["serial"]}</h1>
% if message:
<p class="status" role="status" id="console-message">${message}</p>
% endif
<dl class="facts" id="card-facts">
  <dt>Owner</dt><dd>\
% if card["owner"]:
<a href="${url_for('console_person', login=card['owner'])}">${card["owner"]}</a>\
% else:
— (released)\
% endif
</dd>
  <dt>Status</dt><dd class="card-status">${card["status"]}</dd>
% if card["kind"] == "temporary":
  <dt>Temporary card</dt><dd id="card-temporary">stands in for
  <a href="${url_for('console_card', serial=links['stands_in_for'])}">${links["stands_in_for"]}</a>;
  certificates ${("until " + links["valid_until"].strftime("%Y-%m-%d %H:%M") + " UTC") if links["valid_until"] else "not issued yet"}</dd>
% endif
% for t in links["stand_ins"]:
  <dt>Temporary card</dt><dd class="card-stand-in"><a href="${url_for('console_card', serial=t['serial'])}">${t["serial"]}</a>
  (${t["status"]}${(", certificates until " + t["valid_until"].strftime("%Y-%m-%d %H:%M") + " UTC") if t["valid_until"] else ""})</dd>
% endfor
  <dt>Model</dt><dd>${card["model"] or "—"} ${card["manufacturer"] or ""}</dd>
  <dt>First seen</dt><dd>${parts.when(card["first_seen"])} UTC</dd>
  <dt>Last seen</dt><dd>${parts.when(card["last_seen"])} UTC</dd>
</dl>
% if transitions:
<section class="actions" id="card-transitions">
  <h2>Change the card's state</h2>
  % for t in transitions:
  <form method="post" action="${url_for('console_card_transition', serial=card['serial'])}" id="transition-${t.name}">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <input type="hidden" name="transition" value="${t.name}">
    <label><input type="checkbox" name="confirm" value="yes" required> confirm</label>
    <input type="text" name="comment" maxlength="1000" placeholder="comment (audit trail)" aria-label="Comment for ${t.label}">
    <button type="submit">${t.label}</button>
  </form>
  % endfor
</section>
% endif
% if may_unblock:
<section class="actions" id="card-unblock">
  <h2>PIN blocked?</h2>
  <p>Start a PIN unblock for ${card["owner"]}: they then open "My certificates", run the token agent with the
     card and set a new PIN. The card's unblock key (PUK) goes to their agent only, once.</p>
  <form method="post" action="${url_for('console_card_unblock', serial=card['serial'])}" id="start-unblock">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <input type="text" name="reason" maxlength="500" placeholder="reason, e.g. ticket number" aria-label="Reason for the PIN unblock">
    <button type="submit">Start a PIN unblock for the owner</button>
  </form>
</section>
% endif
<h2>Certificates</h2>
% if certs:
${parts.cert_table(certs, "card-certificates")}
% else:
<p>No certificates were issued for this card.</p>
% endif
<h2>History</h2>
<table class="audit" id="card-history">
  <thead><tr><th scope="col">Time (UTC)</th><th scope="col">Who</th><th scope="col">Role</th><th scope="col">Event</th><th scope="col">Outcome</th></tr></thead>
  <tbody>
  % for h in history:
    <tr><td>${parts.when(h["logged_at"])}</td><td>${h["actor"]}</td><td>${h["role_name"] or ""}</td><td>${h["event"]}</td><td>${h["outcome"]}</td></tr>
  % endfor
  </tbody>
</table>
<h2>Workflows</h2>
% if flows:
${parts.workflow_table(flows, "card-workflows")}
% else:
<p>No workflows name this card.</p>
% endif
