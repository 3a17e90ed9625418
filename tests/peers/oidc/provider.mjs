// A real OpenID Provider (panva/oidc-provider) for the Gatehouse test-suite.
//
// Usage: node provider.mjs CONFIG.json
// The config file (written by tests/peers/oidc_provider.py) carries the signing
// keys, so a test can "rotate" keys by restarting the provider on the same port
// with a different key set. The provider binds 127.0.0.1 on the configured port
// (0 = any free port) and prints one JSON line {"issuer": ...} once it is ready.

import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const accounts = config.accounts ?? {};
const clientGroups = config.client_groups ?? {};
const resource = config.resource ?? 'urn:gatehouse:api';

// Claims beyond the standard ones (tid, department...) that some accounts carry:
// released with the profile scope, like most IdPs put tenant and profile data.
const extraClaimNames = [...new Set(
  Object.values(accounts).flatMap((account) => Object.keys(account.claims ?? {})),
)];

function accountClaims(id) {
  const account = accounts[id] ?? {};
  const claims = {
    sub: id,
    email: account.email ?? `${id}@example.test`,
    email_verified: true,
    name: account.name ?? id,
    groups: account.groups ?? [],
    ...(account.claims ?? {}),
  };
  if (account.groups_overage) {
    // Entra ID past 200 groups: no groups claim, a pointer to Graph instead.
    delete claims.groups;
    claims._claim_names = { groups: 'src1' };
    claims._claim_sources = {
      src1: { endpoint: `https://graph.example.test/v1.0/users/${id}/getMemberObjects` },
    };
  }
  return claims;
}

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: config.jwks,
    cookies: { keys: ['gatehouse-test-provider-cookie-key'] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'api:read'],
    claims: {
      // How and when the user logged in, in every ID token as most IdPs do.
      openid: ['sub', 'amr', 'acr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', ...extraClaimNames],
      groups: ['groups'],
    },
    // Put the requested claims into the ID token itself, as most IdPs do.
    conformIdTokenClaims: false,
    findAccount(ctx, id) {
      return {
        accountId: id,
        claims: async () => accountClaims(id),
      };
    },
    extraTokenClaims(ctx, token) {
      if (token.accountId) {
        return { groups: accountClaims(token.accountId).groups };
      }
      const groups = clientGroups[token.clientId];
      return groups ? { groups } : undefined;
    },
    // First-party clients: grant whatever was asked so the dev login form is
    // the only interaction (no consent screen to click through).
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        return ctx.oidc.provider.Grant.find(grantId);
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(ctx.oidc.params.scope ?? 'openid');
      grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name', 'groups', ...extraClaimNames]);
      grant.addResourceScope(resource, 'api:read');
      await grant.save();
      return grant;
    },
    // Tests opt out of refresh tokens (an IdP that issues none for the default scopes).
    issueRefreshToken: async (ctx, client) => config.issue_refresh_tokens !== false
      && client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: () => config.rotate_refresh_tokens !== false,
    pkce: { required: () => true },
    ttl: {
      AccessToken: config.access_token_ttl ?? 300,
      ClientCredentials: config.access_token_ttl ?? 300,
      IdToken: config.id_token_ttl ?? 300,
      RefreshToken: 3600,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Clients listed as opaque get RFC 7662-only tokens (no resource, no JWT).
        defaultResource: (ctx, client) => (
          (config.opaque_clients ?? []).includes(client.clientId) ? undefined : resource),
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          if (indicator !== resource) {
            throw new Error('unknown resource');
          }
          return {
            scope: 'api:read',
            audience: resource,
            accessTokenTTL: config.access_token_ttl ?? 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: config.access_token_alg ?? 'RS256' } },
          };
        },
      },
    },
  });

  // Some IdPs leave id_token out of refresh responses; tests opt into that quirk.
  if (config.omit_id_token_on_refresh) {
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/token' && ctx.body && typeof ctx.body === 'object'
        && ctx.oidc?.params?.grant_type === 'refresh_token') {
        delete ctx.body.id_token;
      }
    });
  }
  // Slow refresh answers (the token is spent at once, the answer comes late), so
  // tests can race a logout or a second replica against a refresh in flight.
  if (config.refresh_delay_ms) {
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/token' && ctx.oidc?.params?.grant_type === 'refresh_token') {
        await new Promise((resolve) => { setTimeout(resolve, config.refresh_delay_ms); });
      }
    });
  }

  // Counts of token requests by grant type, for tests that must see how often
  // a refresh token was spent.
  const tokenRequests = {};
  provider.use(async (ctx, next) => {
    if (ctx.path === '/test/token-requests') {
      ctx.body = tokenRequests;
      return;
    }
    await next();
    const grant = ctx.path === '/token' ? ctx.oidc?.params?.grant_type : undefined;
    if (grant) {
      tokenRequests[grant] = (tokenRequests[grant] ?? 0) + 1;
    }
  });

  // Accounts may log in with multi-factor methods (amr) and an assurance level
  // (acr); the dev login form has no such step, so they are set here.
  const finished = provider.interactionFinished.bind(provider);
  provider.interactionFinished = async (req, res, result, options) => {
    const account = result.login ? accounts[result.login.accountId] : undefined;
    if (account?.amr) {
      result.login.amr = account.amr;
    }
    if (account?.acr) {
      result.login.acr = account.acr;
    }
    return finished(req, res, result, options);
  };
  return provider;
}

const server = http.createServer();
server.listen(config.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = build(issuer);
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
