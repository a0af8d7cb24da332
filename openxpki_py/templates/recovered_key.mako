<%inherit file="base.mako"/>
<%block name="page_title">Your recovered key</%block>
<h1>Your recovered ${cert_type} key</h1>
<p class="status" role="status" id="my-message">This page is shown once: the file and its password are not
  stored anywhere and cannot be shown again. Save the file now and note the password.</p>
<p><a id="download-pkcs12" download="${filename}" href="data:application/x-pkcs12;base64,${pkcs12}">Download the key and its certificate (PKCS#12)</a></p>
<p>One-time password of the file (type it with the dashes):
  <code id="pkcs12-password">${password}</code></p>
<p>Import the file into the program that opens your old encrypted mail or files (it asks for this
  password), then delete the downloaded file. Nobody else has seen this password, not even the Key
  Recovery Officers who released the key.</p>
<p><a href="${url_for('my_certificates')}">Back to My certificates</a></p>
