<%inherit file="base.mako"/>
<%block name="page_title">My certificates</%block>
<h1>My certificates</h1>
% if not certs:
<p>You have no certificates yet. <a href="${url_for('personalize')}">Personalize a smartcard</a> to get them.</p>
% else:
<table class="certificates" id="my-certificates">
  <thead><tr><th>Profile</th><th>Subject</th><th>Serial</th><th>Valid</th><th>Status</th><th>Card</th><th></th></tr></thead>
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
      <td>${card["serial"] if card else ""}${(" – " + card["status"]) if card and card["status"] != "active" else ""}</td>
      <td><a href="${url_for('my_certificate_download', serial=c['serial'])}">Download</a></td>
    </tr>
  % endfor
  </tbody>
</table>
% endif
<p>A lost card? Tell the help desk: they block it and revoke its certificates.</p>
