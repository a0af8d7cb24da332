<%inherit file="base.mako"/>
<%block name="page_title">My certificates</%block>
<h1>My certificates</h1>
% if message:
<p class="status" role="status" id="my-message">${message}</p>
% endif
% if recovered:
<section id="my-recovered-keys">
  <h2>A recovered key is waiting for you</h2>
  <p>Two Key Recovery Officers released a copy of your escrowed key to you. Collect it here, once: the next
    page offers it as a PKCS#12 file with a one-time password that only you see.</p>
  % for r in recovered:
  <p>Your ${r.cert_type} key${(" of certificate " + r.certificate_serial) if r.certificate_serial else ""},
    released by ${r.released_by}${("; collect it by " + r.collect_by.strftime("%Y-%m-%d %H:%M") + " UTC") if r.collect_by else ""}.</p>
  <form method="post" action="${url_for('my_recovered_key', wf_id=r.workflow_id)}" class="actions recovered-key" data-recovery-id="${r.workflow_id}">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <label><input type="checkbox" name="confirm" value="yes" required> I am ready to save the file and note its password</label>
    <button type="submit">Collect my ${r.cert_type} key</button>
  </form>
  % endfor
</section>
% endif
% if not certs:
<p>You have no certificates yet. <a href="${url_for('personalize')}">Personalize a smartcard</a> to get them.</p>
% else:
<table class="certificates" id="my-certificates">
  <thead><tr><th>Profile</th><th>Subject</th><th>Serial</th><th>Valid</th><th>Status</th><th>Card</th><th>Key</th><th></th></tr></thead>
  <tbody>
  % for c in certs:
    <%
      card = cards.get(c["token_id"])
      expired = c["status"] == "valid" and c["not_after"] <= now
    %>
    <tr class="certificate" data-serial="${c['serial']}">
      <td>${c["profile"]}</td>
      <td>${c["subject"]}</td>
      <td><code>${c["serial"]}</code></td>
      <td>${c["not_before"].strftime("%Y-%m-%d")} – ${c["not_after"].strftime("%Y-%m-%d")}</td>
      <td class="status">${"expired" if expired else c["status"]}${(" (" + c["revocation_reason"] + ")") if c["revocation_reason"] else ""}</td>
      <td>${card["serial"] if card else ""}${(" – " + card["status"]) if card and card["status"] != "active" else ""}\
% if card and card["id"] in temporary:
 <span class="temporary-card">(temporary card${(", until " + temporary[card["id"]].strftime("%Y-%m-%d %H:%M") + " UTC") if temporary[card["id"]] else ""})</span>\
% endif
</td>
      <td class="key-escrow">${"escrowed (recoverable)" if c["public_key_sha256"] in escrowed or c["key_origin"] == "server-escrowed" else "not escrowed"}</td>
      <td><a href="${url_for('my_certificate_download', serial=c['serial'])}">Download</a></td>
    </tr>
  % endfor
  </tbody>
</table>
% endif
<%
  own_cards = [c for c in cards.values() if "lost" in own_transitions.get(c["serial"], ())]
  may_report = "my_card_lost" in available
%>
% if own_cards and may_report:
<section id="my-cards">
  <h2>Lost your card?</h2>
  <p>Block it here: its certificates are revoked at once, so nobody can sign on with it. Then ask the help desk for a new card.</p>
  % for c in own_cards:
  <form method="post" action="${url_for('my_card_lost', serial=c['serial'])}" class="actions">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <label><input type="checkbox" name="confirm" value="yes" required> card ${c["serial"]} is lost or stolen</label>
    <button type="submit">Block card ${c["serial"]}</button>
  </form>
  % endfor
</section>
% else:
<p>A lost card? Tell the help desk: they block it and revoke its certificates.</p>
% endif
% for serial, names in own_transitions.items():
  % for t in [t for t in lifecycle_transitions if t.name in names and t.name != "lost"]:
<form method="post" action="${url_for('my_card_transition', serial=serial)}" class="actions" id="my-${t.name}-${serial}">
  <input type="hidden" name="csrf_token" value="${csrf_token}">
  <input type="hidden" name="transition" value="${t.name}">
  <label><input type="checkbox" name="confirm" value="yes" required> card ${serial}: ${t.label}</label>
  <button type="submit">${t.label}</button>
</form>
  % endfor
% endfor
<%
  active_cards = [c for c in cards.values() if c["owner"] == identity.login and c["status"] == "active"]
%>
% if unblocks:
<section id="my-unblocks">
  <h2>PIN unblocks under way</h2>
  <ul>
  % for u in unblocks:
    <li><a href="${url_for('pin_unblock_page', wf_id=u.id)}" class="unblock-link">Unblock PIN (${u.state})</a>${"" if u.creator == identity.login else " – started by the help desk (" + u.creator + ")"}</li>
  % endfor
  </ul>
</section>
% endif
% if active_cards and "my_card_unblock" in available:
<section id="my-pin-unblock">
  <h2>PIN blocked? Unblock it</h2>
  <p>Three wrong PINs block a card. You can unblock it yourself: you need the card, this computer with the
     token agent, and a new PIN of 6 to 8 characters. The card's unblock key never passes through your hands.</p>
  % for c in active_cards:
  <form method="post" action="${url_for('my_card_unblock', serial=c['serial'])}" class="actions">
    <input type="hidden" name="csrf_token" value="${csrf_token}">
    <button type="submit" id="unblock-${c['serial']}">Unblock the PIN of card ${c["serial"]}</button>
  </form>
  % endfor
</section>
% endif
