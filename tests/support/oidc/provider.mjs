// A real OpenID provider for the SSO tests: panva's certified oidc-provider,
// configured here (clients, accounts, claims) with a password login page of
// our own, as every deployment of oidc-provider writes its interactions.
//
//   node provider.mjs settings.json
//
// settings.json: {issuer, host, port, clients: [...], accounts: {login:
// {password, claims}}, cookie_keys: [...], tls: {cert, key} (optional)}.
// Test use only: passwords sit in a file, keys are made at start.

import { readFileSync } from 'node:fs';
import { createServer as createHttps } from 'node:https';
import Provider from 'oidc-provider';

const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = settings.accounts;

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, message) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head><body>
<h1>Test IdP</h1><p id="message">${escape(message)}</p>
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Login <input name="login" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>`;
}

async function formBody(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 8192) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

// The enterprise has consented for its own relying parties: grant what was asked.
async function loadExistingGrant(ctx) {
  const { provider: op, client, session, params } = ctx.oidc;
  const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
  if (grantId) return op.Grant.find(grantId);
  const grant = new op.Grant({ clientId: client.clientId, accountId: session.accountId });
  grant.addOIDCScope(String(params.scope || 'openid'));
  await grant.save();
  return grant;
}

const provider = new Provider(settings.issuer, {
  clients: settings.clients,
  cookies: { keys: settings.cookie_keys },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  findAccount: async (ctx, id) => (Object.hasOwn(accounts, id)
    ? { accountId: id, claims: async () => ({ sub: id, ...accounts[id].claims }) }
    : undefined),
  features: { devInteractions: { enabled: false }, rpInitiatedLogout: { enabled: true } },
  loadExistingGrant,
});

provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
  if (!match) return next();
  const [, uid, submit] = match;
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name !== 'login') throw new Error(`unexpected prompt ${details.prompt.name}`);
  ctx.set('Cache-Control', 'no-store');
  if (ctx.method === 'GET' && !submit) {
    ctx.type = 'html';
    ctx.body = loginPage(uid, '');
    return undefined;
  }
  if (ctx.method !== 'POST' || !submit) return next();
  const form = await formBody(ctx.req);
  const login = form.get('login') || '';
  if (!Object.hasOwn(accounts, login) || accounts[login].password !== form.get('password')) {
    ctx.type = 'html';
    ctx.body = loginPage(uid, 'Wrong login or password.');
    return undefined;
  }
  const to = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: login } },
    { mergeWithLastSubmission: false });
  ctx.status = 303;
  ctx.redirect(to);
  return undefined;
});

const host = settings.host || '127.0.0.1';
if (settings.tls) {
  const tls = { cert: readFileSync(settings.tls.cert), key: readFileSync(settings.tls.key) };
  createHttps(tls, provider.callback()).listen(settings.port, host);
} else {
  provider.listen(settings.port, host);
}
console.log(`listening ${settings.issuer}`);
