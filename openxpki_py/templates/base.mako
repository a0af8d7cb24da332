## The layout every page inherits.  Autoescape is on (default_filters=['h']):
## ${...} is HTML-escaped; nothing here prints outside data with "| n".
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title><%block name="page_title"/> – ${instance_name}</title>
  <link rel="stylesheet" href="${url_for('static', filename='style.css')}">
</head>
<body>
  <a class="skip" href="#main">Skip to content</a>
  <header class="site">
    <p class="brand">${instance_name}</p>
    % if identity is not None:
    <p class="who" id="who">Signed in as <strong class="display-name">${identity.display_name}</strong>\
      % if identity.display_name != identity.login:
 (<span class="login">${identity.login}</span>)\
      % endif
      % if role is not None:
, role <strong class="role">${role}</strong>\
      % endif
</p>
    % endif
  </header>
  % if not hide_menu and role is not None:
  <nav class="menu" aria-label="Main menu">
    <ul>
      <li><a href="${url_for('home')}">Home</a></li>
      % for entry in menu:
      <li><a href="${url_for(entry.endpoint)}">${entry.label}</a></li>
      % endfor
      % if can_switch:
      <li><a href="${url_for('login')}">Switch role</a></li>
      % endif
    </ul>
    <form method="post" action="${url_for('logout')}" class="inline">
      <input type="hidden" name="csrf_token" value="${csrf_token}">
      <button type="submit">End session</button>
    </form>
  </nav>
  % endif
  <main id="main">
${next.body()}
  </main>
</body>
</html>
