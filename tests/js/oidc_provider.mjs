#!/usr/bin/env node
// A real OpenID provider for jwtmcp's upstream-login tests: panva's certified `oidc-provider`
// (npm), on 127.0.0.1 only, with its own development login and consent pages.
//
//   node oidc_provider.mjs PORT CONFIG_JSON_FILE
//
// CONFIG_JSON_FILE holds {"client_id", "client_secret", "redirect_uris": [...],
// "accounts": {"<login>": {<claims: email, email_verified, name, groups ...>}}}. Any password
// signs an account in (development interactions); an unknown login is refused. ID tokens
// carry the scopes' claims (conformIdTokenClaims off), as Okta, Entra ID and Keycloak do.
// Prints one line "listening http://127.0.0.1:PORT" on stdout once it accepts connections.

import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const config = JSON.parse(readFileSync(process.argv[3], 'utf8'));
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.client_id,
      client_secret: config.client_secret,
      redirect_uris: config.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  cookies: { keys: [config.cookie_key || 'jwtmcp-tests-cookie-key-0123456789'] },
});
provider.proxy = false;

// The development pages import a web font from the internet: a CSP keeps the browser on
// loopback (styles inline or from here only); nothing else changes.
provider.use(async (ctx, next) => {
  await next();
  if ((ctx.type || '').startsWith('text/html')) {
    ctx.set('Content-Security-Policy', "default-src 'self'; style-src 'self' 'unsafe-inline'");
  }
});

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
