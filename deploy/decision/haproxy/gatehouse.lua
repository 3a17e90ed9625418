-- Gatehouse decision mode for HAProxy (2.6+, built with Lua): an http-request
-- action that asks Gatehouse's /.gatehouse/decide about each request.
--
--   lua-load /etc/haproxy/gatehouse.lua                   (global section)
--   http-request lua.gatehouse_decide http://10.0.0.5:9000 (frontend)
--
-- Before asking, every header a client may not set for the upstream is
-- removed (Gatehouse's namespace, other proxies' identity headers, path hints;
-- names compared case-insensitively with "_" read as "-"). On 200 the headers
-- Gatehouse hands over are set on the request; any other answer (401, a
-- sign-in redirect for browsers, 403, 404, 429, 503) goes to the client as it
-- is. Gatehouse unreachable: 503, never an allow.

-- What Gatehouse hands over on 200 (add any custom credential header).
local COPY = {
  "x-gatehouse-subject", "x-gatehouse-email", "x-gatehouse-groups",
  "x-gatehouse-groups-truncated", "x-gatehouse-assertion", "authorization",
  "x-serverless-authorization", "cookie",
}
-- What a client never sets for the upstream, besides Gatehouse's namespace.
local STRIP = {
  ["x-forwarded-user"] = true, ["x-forwarded-email"] = true, ["x-forwarded-groups"] = true,
  ["x-forwarded-preferred-username"] = true, ["x-forwarded-access-token"] = true,
  ["x-serverless-authorization"] = true, ["x-api-key"] = true,
  ["x-forwarded-uri"] = true, ["x-forwarded-method"] = true, ["x-original-uri"] = true,
  ["x-original-method"] = true, ["x-original-url"] = true, ["x-rewrite-url"] = true,
  ["x-envoy-original-path"] = true, ["x-http-method-override"] = true,
  ["x-http-method"] = true, ["x-method-override"] = true,
}
-- The client's headers Gatehouse reads: to authenticate, to tell pages from API
-- calls, and to check that a session's unsafe request or WebSocket handshake
-- comes from this origin.
local PASS = {
  "authorization", "cookie", "accept", "x-requested-with", "x-api-key", "traceparent",
  "tracestate", "origin", "sec-fetch-site", "upgrade",
}

local function normalised(name)
  return string.lower(name):gsub("_", "-")
end

local function strip(txn)
  local names = {}
  for name, _ in pairs(txn.http:req_get_headers()) do
    local norm = normalised(name)
    if STRIP[norm] or norm:sub(1, 12) == "x-gatehouse-" or norm:sub(1, 15) == "x-auth-request-" then
      names[#names + 1] = name
    end
  end
  for _, name in ipairs(names) do
    txn.http:req_del_header(name)
  end
end

local function decide(txn, address)
  local sent = txn.http:req_get_headers()
  local headers = {
    ["x-forwarded-method"] = { txn.f:method() },
    ["x-forwarded-uri"] = { txn.f:url() },
    ["x-forwarded-host"] = { txn.f:req_hdr("host") or "" },
    ["x-forwarded-proto"] = { txn.f:ssl_fc() and "https" or "http" },
    ["x-forwarded-for"] = { txn.f:src() },
    ["x-request-id"] = { txn.f:req_hdr("x-request-id") or "" },
  }
  for _, name in ipairs(PASS) do
    if sent[name] then
      local values = {}
      for i = 0, #sent[name] do values[#values + 1] = sent[name][i] end
      headers[name] = values
    end
  end
  -- Gatehouse's own paths are never decided on: the login pages are routed to it.
  local answer = core.httpclient():get{
    url = address .. "/.gatehouse/decide", headers = headers, timeout = 5000,
  }
  if answer == nil or answer.status == nil or answer.status == 0 then
    txn:done(txn:reply{ status = 503, headers = { ["content-type"] = { "application/json" } },
      body = '{"error":"decision_unavailable","status":503}' })
    return
  end
  local got = {}
  for name, values in pairs(answer.headers or {}) do
    got[string.lower(name)] = values
  end
  if answer.status >= 200 and answer.status < 300 then
    for _, name in ipairs(COPY) do
      txn.http:req_del_header(name)
      local values = got[name]
      if values and values[0] and values[0] ~= "" then
        txn.http:req_set_header(name, values[0])
      end
    end
    -- A session Gatehouse refreshed (without shared state) goes back to the browser.
    local cookie = got["set-cookie"]
    if cookie and cookie[0] then
      txn:set_var("txn.gatehouse_set_cookie", cookie[0])
    end
    return
  end
  local reply = {}
  for name, values in pairs(got) do
    if name ~= "content-length" and name ~= "connection" and name ~= "transfer-encoding" then
      reply[name] = { values[0] }
    end
  end
  txn:done(txn:reply{ status = answer.status, headers = reply, body = answer.body or "" })
end

core.register_action("gatehouse_decide", { "http-req" }, function(txn, address)
  strip(txn)
  decide(txn, address)
end, 1)
