// A small OIDC identity provider for bastion's tests and demo, built on oidc-provider.
//
// Usage: node server.js CONFIG.json
// CONFIG: {issuer, port, clients: [{client_id, client_secret?}], accounts: [{username, password,
//   sub, email, name, groups}], jwks: {keys: [private JWKs]}, device_code_ttl, id_token_ttl,
//   device_interval, slow_down_polls, cookie_key}
//
// Beyond stock oidc-provider it adds what RFC 8628 allows an IdP to do and tests need to see:
// an `interval` in the device authorization response, `slow_down` when a device code is polled
// faster than its interval (and, for tests, on the first `slow_down_polls` polls), and
// GET /_test/polls listing every poll with its time and answer. Sign-in checks real passwords.

import { readFileSync } from 'node:fs';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(config.accounts.map((a) => [a.sub, a]));
const byUsername = new Map(config.accounts.map((a) => [a.username, a]));
const interval = config.device_interval ?? 5;
const polls = []; // {device_code_hash, at, answer}
const pollState = new Map(); // device_code -> {last, interval, forced}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8">
<title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;

const clients = config.clients.map((c) => ({
  client_id: c.client_id,
  ...(c.client_secret
    ? { client_secret: c.client_secret, token_endpoint_auth_method: 'client_secret_basic' }
    : { token_endpoint_auth_method: 'none' }),
  grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
  response_types: [],
  redirect_uris: [],
  client_name: c.client_name ?? 'bastion',
  id_token_signed_response_alg: c.id_token_signed_response_alg ?? 'RS256',
}));

const provider = new Provider(config.issuer, {
  clients,
  jwks: config.jwks,
  cookies: { keys: [config.cookie_key ?? 'bastion-demo-idp-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  conformIdTokenClaims: false, // the ID token carries the scope's claims; bastion reads only it
  ttl: {
    DeviceCode: config.device_code_ttl ?? 600,
    IdToken: config.id_token_ttl ?? 3600,
    AccessToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form, out, err) => {
        const msg = err ? '<p id="error">The code is wrong, expired, denied or already used.</p>' : '';
        ctx.body = page('Enter the code', `${msg}${form}<button type="submit" form="op.deviceInputForm">Continue</button>`);
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = page('Confirm device', `<p>${esc(client.clientName ?? client.clientId)} asks to sign you in.</p>
<p>Code: <code id="user_code">${esc(userCode)}</code></p>${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
      },
      successSource: async (ctx) => {
        ctx.body = page('Signed in', '<p id="done">You are signed in. Return to your terminal.</p>');
      },
    },
    revocation: { enabled: false },
  },
  pkce: { required: () => false },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, sub) => {
    const account = accounts.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      claims: async () => ({
        sub,
        email: account.email,
        email_verified: true,
        name: account.name,
        preferred_username: account.username,
        groups: account.groups ?? [],
      }),
    };
  },
});
provider.proxy = false;

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return querystring.parse(Buffer.concat(chunks).toString('utf8'));
}

function loginForm(uid, error) {
  return page('Sign in', `${error ? `<p id="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<input type="text" name="username" autofocus>
<input type="password" name="password">
<button type="submit">Sign in</button>
</form>`);
}

function consentForm(uid, details) {
  const scopes = (details.missingOIDCScope ?? []).join(' ');
  return page('Authorize bastion', `<p>bastion asks for: ${esc(scopes)}</p>
<form method="post" action="/interaction/${esc(uid)}/confirm"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Deny</button></form>`);
}

// Interactions (sign-in and consent), the test hooks, and the device-flow extras.
provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (m) {
    const [, uid, action] = m;
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
    ctx.set('cache-control', 'no-store');
    if (!action && ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = details.prompt.name === 'login' ? loginForm(uid) : consentForm(uid, details.prompt.details);
      return;
    }
    if (ctx.method !== 'POST') ctx.throw(405);
    const form = await readForm(ctx.req);
    if (action === 'login') {
      const account = byUsername.get(String(form.username ?? ''));
      if (!account || account.password !== form.password) {
        ctx.type = 'html';
        ctx.body = loginForm(uid, 'Wrong user name or password.');
        return;
      }
      await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: account.sub } },
        { mergeWithLastSubmission: false });
      return;
    }
    if (action === 'confirm') {
      const { prompt: { details: missing }, grantId, session, params } = details;
      const grant = grantId ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      await provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId: await grant.save() } },
        { mergeWithLastSubmission: true });
      return;
    }
    await provider.interactionFinished(ctx.req, ctx.res,
      { error: 'access_denied', error_description: 'End-User denied the request' },
      { mergeWithLastSubmission: false });
    return;
  }

  if (ctx.path === '/_test/polls' && ctx.method === 'GET') {
    ctx.body = polls;
    return;
  }

  if (ctx.path === '/token' && ctx.method === 'POST' && ctx.is('application/x-www-form-urlencoded')) {
    const form = await readForm(ctx.req);
    ctx.req.body = form; // oidc-provider reads a pre-parsed body from here
    if (form.grant_type === 'urn:ietf:params:oauth:grant-type:device_code' && form.device_code) {
      const key = String(form.device_code);
      const now = Date.now() / 1000;
      const state = pollState.get(key) ?? { last: 0, interval, forced: 0 };
      const early = now - state.last < state.interval - 0.1; // small tolerance for timer jitter
      const forced = state.forced < (config.slow_down_polls ?? 0);
      state.last = now;
      pollState.set(key, state);
      if (early || forced) {
        if (forced) state.forced += 1;
        state.interval += 5; // RFC 8628 3.5: the client adds 5 s; the server expects it
        polls.push({ device_code: key.slice(0, 8), at: now, answer: 'slow_down' });
        ctx.status = 400;
        ctx.body = { error: 'slow_down', error_description: 'polling too fast' };
        return;
      }
      await next();
      const answer = ctx.status === 200 ? 'token' : (ctx.body?.error ?? String(ctx.status));
      polls.push({ device_code: key.slice(0, 8), at: now, answer });
      return;
    }
  }

  await next();

  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
    ctx.body = { ...ctx.body, interval };
  }
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(config.port, '127.0.0.1', () => {
  console.log(`idp listening on ${config.issuer}`);
});
