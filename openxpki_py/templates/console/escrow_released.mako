<%inherit file="../base.mako"/>
<%block name="page_title">Key released</%block>
<h1>Escrowed key ${escrow_id} released for ${owner}</h1>
<p class="status" role="status" id="console-message">Recovery request ${wf_id} is done. This page is shown once:
  the PKCS#12 and its password are not stored anywhere and cannot be shown again.</p>
<p><a id="download-pkcs12" download="${owner}-recovered.p12" href="data:application/x-pkcs12;base64,${pkcs12}">Download the PKCS#12</a></p>
<p>One-time password (give it to ${owner} only, by a different channel than the file):
  <code id="pkcs12-password">${password}</code></p>
