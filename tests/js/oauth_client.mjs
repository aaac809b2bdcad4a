#!/usr/bin/env node
// A second real MCP client for jwtmcp's sign-in tests: the TypeScript SDK's own OAuth
// machinery (StreamableHTTPClientTransport + an OAuthClientProvider), with the browser step
// done over HTTP: redirectToAuthorization follows the issuer's login and consent forms (inputs
// parsed by name, a cookie jar kept by hand) and captures the code from the redirect to the
// loopback redirect URI (no listener: the Location header is read, redirect: "manual").
//
//   node oauth_client.mjs --server URL --username NAME [--password PW]
//       [--untick tool:subtract ...] [--deny] [--call 'add {"a":1,"b":2}' ...]
//       [--client-metadata-url https://...] [--redirect-uri http://127.0.0.1:PORT/callback]
//       [--state FILE] [--timeout SECONDS]
//
// The password may come from $OAUTH_CLIENT_PASSWORD instead of argv. --state FILE keeps the
// client registration and tokens between runs (as a real client persists them), so a second
// run refreshes instead of signing in again. Prints exactly one JSON line on stdout:
//   {"ok": true, "tools": [...], "results": [...], "result": <last call>, "token_scope": ...,
//    "token_claims": {...}, "authorizations": N, "refreshes": N, "tools_after": [...]}
// or {"ok": false, "stage": ..., "error": ...} and exits 1. Tokens, codes and passwords are
// never printed.

import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError, auth, extractWWWAuthenticateParams } from '@modelcontextprotocol/sdk/client/auth.js';

const MAX_FORM_STEPS = 8;
const MAX_AUTHORIZATIONS = 4;

let stage = 'arguments';

function fail(error) {
    const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    process.stdout.write(`${JSON.stringify({ ok: false, stage, error: message })}\n`);
    process.exit(1);
}

// --- a tiny HTML form reader (the issuer's pages are plain server-rendered HTML) ---------

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", '#39': "'" };

function decodeEntities(text) {
    return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, name) => {
        if (name[0] === '#') {
            const code = name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
            return Number.isFinite(code) ? String.fromCodePoint(code) : whole;
        }
        return ENTITIES[name.toLowerCase()] ?? whole;
    });
}

function parseAttributes(source) {
    const attributes = {};
    const pattern = /([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?/g;
    for (const match of source.matchAll(pattern)) {
        const value = match[2] ?? match[3] ?? match[4];
        attributes[match[1].toLowerCase()] = value === undefined ? '' : decodeEntities(value);
    }
    return attributes;
}

/** The forms of a page: {action, method, inputs: [{tag, ...attributes}], buttons: [...]}. */
export function parseForms(html) {
    const forms = [];
    let current = null;
    const tags = /<(\/?)(form|input|button|select|textarea)\b([^>]*)>/gi;
    for (const match of html.matchAll(tags)) {
        const [closing, tag, rest] = [match[1] === '/', match[2].toLowerCase(), match[3]];
        if (tag === 'form') {
            if (closing) {
                current = null;
            } else {
                const attributes = parseAttributes(rest);
                current = {
                    action: attributes.action ?? '',
                    method: (attributes.method ?? 'get').toLowerCase(),
                    inputs: [],
                    buttons: [],
                };
                forms.push(current);
            }
            continue;
        }
        if (closing || current === null) continue;
        const attributes = parseAttributes(rest);
        const type = (attributes.type ?? (tag === 'button' ? 'submit' : 'text')).toLowerCase();
        if (tag === 'button' || (tag === 'input' && (type === 'submit' || type === 'image'))) {
            if (type === 'submit') current.buttons.push({ name: attributes.name, value: attributes.value ?? '' });
        } else {
            current.inputs.push({ tag, type, ...attributes });
        }
    }
    return forms;
}

/** The visible text of a page, whitespace collapsed (for error messages). */
function pageText(html) {
    const text = html.replace(/<(script|style)\b[\s\S]*?<\/\1>/gi, ' ').replace(/<[^>]*>/g, ' ');
    return decodeEntities(text).replace(/\s+/g, ' ').trim();
}

// --- cookies, kept by hand (fetch has no jar) --------------------------------------------

class CookieJar {
    constructor() {
        this.cookies = new Map(); // `${host} ${name}` -> {host, name, value, path}
    }

    store(url, response) {
        const host = new URL(url).host;
        for (const line of response.headers.getSetCookie()) {
            const [pair, ...attributes] = line.split(';');
            const equals = pair.indexOf('=');
            if (equals < 1) continue;
            const name = pair.slice(0, equals).trim();
            const value = pair.slice(equals + 1).trim();
            let path = '/';
            let expired = false;
            for (const attribute of attributes) {
                const [key, ...rest] = attribute.split('=');
                const lower = key.trim().toLowerCase();
                if (lower === 'path') path = rest.join('=').trim() || '/';
                if (lower === 'max-age' && Number(rest.join('=')) <= 0) expired = true;
            }
            if (expired) this.cookies.delete(`${host} ${name}`);
            else this.cookies.set(`${host} ${name}`, { host, name, value, path });
        }
    }

    header(url) {
        const { host, pathname } = new URL(url);
        const matching = [...this.cookies.values()].filter(
            (c) => c.host === host && (pathname === c.path || pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`)),
        );
        return matching.map((c) => `${c.name}=${c.value}`).join('; ');
    }
}

// --- the browser step, over HTTP -----------------------------------------------------------

/**
 * Follow the issuer's pages from `authorizationUrl` until it redirects to `redirectUri`:
 * sign in on the login form, approve (or deny) on the consent form with `untick` unticked.
 * Returns the redirect's query parameters (code, state, iss, or error).
 */
export async function followSignIn(authorizationUrl, { redirectUri, username, password, untick, deny }) {
    const jar = new CookieJar();
    let url = String(authorizationUrl);
    let request = { method: 'GET' };
    const pages = [];
    for (let step = 0; step < MAX_FORM_STEPS; step++) {
        const headers = { ...(request.headers ?? {}) };
        const cookie = jar.header(url);
        if (cookie) headers.cookie = cookie;
        const response = await fetch(url, { ...request, headers, redirect: 'manual', signal: AbortSignal.timeout(10_000) });
        jar.store(url, response);
        if (response.status >= 300 && response.status < 400) {
            const location = response.headers.get('location');
            if (!location) throw new Error(`${response.status} without a Location from ${new URL(url).pathname}`);
            const target = new URL(location, url);
            if (target.href.startsWith(redirectUri)) {
                return Object.fromEntries(target.searchParams);
            }
            if (target.origin !== new URL(url).origin) {
                throw new Error(`the issuer redirected to another origin: ${target.origin}`);
            }
            url = target.href;
            request = { method: 'GET' };
            continue;
        }
        const body = await response.text();
        if (response.status !== 200) {
            throw new Error(`${request.method} ${new URL(url).pathname} answered ${response.status}: ${pageText(body).slice(0, 300)}`);
        }
        const forms = parseForms(body).filter((f) => f.method === 'post');
        const login = forms.find((f) => f.inputs.some((i) => i.name === 'password'));
        const consent = forms.find((f) => f.inputs.some((i) => i.type === 'checkbox' && i.name === 'scope'))
            ?? forms.find((f) => f.buttons.some((b) => b.name === 'decision'));
        const fields = new URLSearchParams();
        let form;
        if (login) {
            if (pages.at(-1) === 'login') throw new Error(`the login form came back: ${pageText(body).slice(0, 300)}`);
            stage = 'login';
            form = login;
            for (const input of form.inputs) {
                if (!input.name) continue;
                if (input.name === 'username') fields.append('username', username);
                else if (input.name === 'password') fields.append('password', password);
                else if (input.type === 'hidden' || input.type === 'text') fields.append(input.name, input.value ?? '');
            }
            const button = form.buttons[0];
            if (button?.name) fields.append(button.name, button.value);
        } else if (consent) {
            stage = 'consent';
            form = consent;
            for (const input of form.inputs) {
                if (!input.name) continue;
                if (input.type === 'checkbox') {
                    const value = input.value ?? 'on';
                    if ('checked' in input && !untick.includes(value)) fields.append(input.name, value);
                } else if (input.type === 'hidden') {
                    fields.append(input.name, input.value ?? '');
                }
            }
            const decision = deny ? 'deny' : 'approve';
            const button = form.buttons.find((b) => b.name === 'decision' && b.value === decision);
            if (!button) throw new Error(`the consent page has no ${decision} button`);
            fields.append('decision', decision);
        } else {
            throw new Error(`no login or consent form at ${new URL(url).pathname}: ${pageText(body).slice(0, 300)}`);
        }
        pages.push(stage);
        url = new URL(form.action || url, url).href;
        request = {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: fields.toString(),
        };
    }
    throw new Error(`no redirect to the client after ${MAX_FORM_STEPS} steps (${pages.join(', ')})`);
}

// --- the OAuthClientProvider ---------------------------------------------------------------

class FormFollowingProvider {
    constructor(options) {
        this.options = options;
        this.redirectUri = options.redirectUri;
        this.statePath = options.statePath;
        this.saved = this.statePath && existsSync(this.statePath) ? JSON.parse(readFileSync(this.statePath, 'utf8')) : {};
        this.pendingCode = undefined;
        this.lastState = undefined;
        this.authorizations = 0;
        this.refreshes = 0;
        this.forcedStepUps = 0;
        this.forceAuthorization = false;
        this.exchanging = false;
        this.callbackIssuers = [];
        if (options.clientMetadataUrl) this.clientMetadataUrl = options.clientMetadataUrl;
    }

    persist() {
        if (this.statePath) writeFileSync(this.statePath, JSON.stringify(this.saved), { mode: 0o600 });
    }

    get redirectUrl() {
        return this.redirectUri;
    }

    get clientMetadata() {
        return {
            client_name: 'jwtmcp TypeScript test client',
            redirect_uris: [this.redirectUri],
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            token_endpoint_auth_method: 'none',
        };
    }

    state() {
        this.lastState = randomBytes(16).toString('base64url');
        return this.lastState;
    }

    clientInformation() {
        return this.saved.clientInformation;
    }

    saveClientInformation(information) {
        this.saved.clientInformation = information;
        this.persist();
    }

    tokens() {
        const tokens = this.saved.tokens;
        if (tokens && this.forceAuthorization) {
            const { refresh_token: _hidden, ...rest } = tokens;
            return rest; // so auth() starts a new authorization instead of refreshing
        }
        return tokens;
    }

    saveTokens(tokens) {
        if (!this.exchanging) this.refreshes += 1; // tokens not from a code: a refresh
        this.saved.tokens = tokens;
        this.persist();
    }

    saveCodeVerifier(verifier) {
        this.saved.codeVerifier = verifier;
        this.persist();
    }

    codeVerifier() {
        if (!this.saved.codeVerifier) throw new Error('no PKCE code verifier saved');
        return this.saved.codeVerifier;
    }

    saveDiscoveryState(state) {
        this.saved.discovery = state;
        this.persist();
    }

    discoveryState() {
        return this.saved.discovery;
    }

    invalidateCredentials(scope) {
        if (scope === 'all' || scope === 'client') delete this.saved.clientInformation;
        if (scope === 'all' || scope === 'tokens') delete this.saved.tokens;
        if (scope === 'all' || scope === 'verifier') delete this.saved.codeVerifier;
        if (scope === 'all' || scope === 'discovery') delete this.saved.discovery;
        this.persist();
    }

    async redirectToAuthorization(authorizationUrl) {
        stage = 'authorize';
        this.authorizations += 1;
        if (this.authorizations > MAX_AUTHORIZATIONS) throw new Error('too many authorization rounds');
        const sentState = authorizationUrl.searchParams.get('state');
        const answer = await followSignIn(authorizationUrl, this.options);
        if (answer.error) {
            const description = answer.error_description ? ` (${answer.error_description})` : '';
            throw new Error(`authorization refused: ${answer.error}${description}`);
        }
        if (!answer.code) throw new Error('the redirect to the client carried no code');
        if (answer.state !== sentState) throw new Error('the redirect to the client carried another state');
        this.callbackIssuers.push(answer.iss ?? null);
        this.pendingCode = answer.code;
    }

    takeCode() {
        const code = this.pendingCode;
        this.pendingCode = undefined;
        return code;
    }
}

// --- the run -------------------------------------------------------------------------------

function claimsOf(accessToken) {
    try {
        return JSON.parse(Buffer.from(accessToken.split('.')[1], 'base64url').toString('utf8'));
    } catch {
        return null;
    }
}

/**
 * Run `action`; when the transport stopped for a sign-in (UnauthorizedError with a code
 * captured), exchange the code and run it again.
 *
 * Step-up: on 403 insufficient_scope the SDK (1.x) calls auth() with the challenged scope,
 * which refreshes when a refresh token is held; a refresh cannot widen the scope (RFC 6749
 * §6), so the retry gets the same 403 and the transport gives up ("403 after trying
 * upscoping", typescript-sdk#2255). Then, as the SDK's 2.x transport does (SEP-2350), this
 * asks auth() for a new authorization with the union of the granted and challenged scopes,
 * the refresh token held back; counted in `forcedStepUps`.
 */
async function withAuthorization(session, action) {
    const { provider } = session;
    for (let round = 0; ; round++) {
        try {
            return await action();
        } catch (error) {
            if (round >= MAX_AUTHORIZATIONS) throw error;
            if (error instanceof UnauthorizedError && provider.pendingCode !== undefined) {
                await exchangeCode(session);
                continue;
            }
            const challenge = session.lastForbidden;
            if (error?.code === 403 && challenge?.error === 'insufficient_scope' && challenge.scope) {
                stage = 'step_up';
                const granted = (provider.tokens()?.scope ?? '').split(' ').filter(Boolean);
                const scope = [...new Set([...granted, ...challenge.scope.split(' ')])].join(' ');
                provider.forceAuthorization = true;
                let result;
                try {
                    result = await auth(provider, {
                        serverUrl: session.serverUrl,
                        resourceMetadataUrl: challenge.resourceMetadataUrl,
                        scope,
                    });
                } finally {
                    provider.forceAuthorization = false;
                }
                if (result !== 'REDIRECT' || provider.pendingCode === undefined) throw error;
                provider.forcedStepUps += 1;
                await exchangeCode(session);
                continue;
            }
            throw error;
        }
    }
}

async function exchangeCode(session) {
    stage = 'token';
    session.provider.exchanging = true;
    try {
        await session.transport.finishAuth(session.provider.takeCode());
    } finally {
        session.provider.exchanging = false;
    }
}

/** fetch for the transport that remembers the last 403 challenge (for the step-up above). */
function recordingFetch(session) {
    return async (url, init) => {
        const response = await fetch(url, init);
        if (response.status === 403) session.lastForbidden = extractWWWAuthenticateParams(response);
        return response;
    };
}

async function main() {
    const { values } = parseArgs({
        options: {
            server: { type: 'string' },
            username: { type: 'string', default: 'demo' },
            password: { type: 'string' },
            untick: { type: 'string', multiple: true, default: [] },
            deny: { type: 'boolean', default: false },
            call: { type: 'string', multiple: true, default: [] },
            'client-metadata-url': { type: 'string' },
            'redirect-uri': { type: 'string', default: 'http://127.0.0.1:33418/callback' },
            state: { type: 'string' },
            timeout: { type: 'string', default: '60' },
        },
        strict: true,
    });
    if (!values.server) throw new Error('--server URL is required');
    const password = values.password ?? process.env.OAUTH_CLIENT_PASSWORD;
    const calls = values.call.map((text) => {
        const space = text.indexOf(' ');
        const name = space < 0 ? text : text.slice(0, space);
        const args = space < 0 ? {} : JSON.parse(text.slice(space + 1));
        return { name, args };
    });
    setTimeout(() => fail(new Error(`gave up after ${values.timeout} s`)), Number(values.timeout) * 1000).unref();

    const provider = new FormFollowingProvider({
        redirectUri: values['redirect-uri'],
        username: values.username,
        password: password ?? '',
        untick: values.untick,
        deny: values.deny,
        clientMetadataUrl: values['client-metadata-url'],
        statePath: values.state,
    });
    const serverUrl = new URL(values.server);

    const session = { provider, serverUrl, transport: null, lastForbidden: undefined };
    const connect = async () => {
        session.transport = new StreamableHTTPClientTransport(serverUrl, {
            authProvider: provider,
            fetch: recordingFetch(session),
        });
        const client = new Client({ name: 'jwtmcp-ts-test-client', version: '1.0.0' });
        await client.connect(session.transport);
        return client;
    };

    stage = 'connect';
    let client;
    try {
        client = await connect();
    } catch (error) {
        if (!(error instanceof UnauthorizedError) || provider.pendingCode === undefined) throw error;
        await exchangeCode(session);
        stage = 'reconnect';
        client = await connect();
    }

    stage = 'list_tools';
    const tools = (await withAuthorization(session, () => client.listTools())).tools.map((t) => t.name);
    const results = [];
    for (const { name, args } of calls) {
        stage = `call_tool ${name}`;
        const result = await withAuthorization(session, () => client.callTool({ name, arguments: args }));
        results.push({ tool: name, isError: result.isError === true, content: result.content, structuredContent: result.structuredContent ?? null });
    }
    stage = 'list_tools_after';
    const toolsAfter = (await withAuthorization(session, () => client.listTools())).tools.map((t) => t.name);
    await client.close().catch(() => {});

    const tokens = provider.tokens();
    const claims = tokens ? claimsOf(tokens.access_token) : null;
    const report = {
        ok: true,
        tools,
        tools_after: toolsAfter,
        results,
        result: results.length ? results[results.length - 1] : null,
        token_scope: claims?.scope ?? tokens?.scope ?? null,
        granted_scope: tokens?.scope ?? null,
        token_claims: claims && {
            iss: claims.iss, sub: claims.sub, aud: claims.aud, client_id: claims.client_id,
            scope: claims.scope, exp: claims.exp, iat: claims.iat,
        },
        has_refresh_token: Boolean(tokens?.refresh_token),
        client_id: provider.clientInformation()?.client_id ?? null,
        callback_iss: provider.callbackIssuers,
        authorizations: provider.authorizations,
        refreshes: provider.refreshes,
        forced_step_ups: provider.forcedStepUps,
    };
    process.stdout.write(`${JSON.stringify(report)}\n`);
}

// Run only as a script, so a test may import parseForms and followSignIn.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
    main().then(() => process.exit(0), fail);
}
