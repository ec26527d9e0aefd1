-- Owns wrk's side of the ingest benchmark: POSTs webhook bodies, counts 2xx apart from other statuses.
-- Arguments after `--`: <body file> <same|unique> <prefix> [groups=N] [quantiles]. In "unique" mode every
-- request replaces @FINGERPRINT@ (prefix, thread, counter) and @MICROS@ (counter) so each one is a new alert
-- episode, and with groups=N also @GROUP@ (counter modulo N: which of N incidents the alerts join).
-- done() prints one line: BENCH_JSON {"sent":..,"ok":..,"non2xx":..,"errors":..,"duration_us":..,"p50_us":..,"p99_us":..}
-- `quantiles` adds "quantiles_us":[[percentile,us],..] on a fixed grid, so several wrk processes can be merged.

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("thread_no", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  template = file:read("*a")
  file:close()
  unique = args[2] == "unique"
  prefix = args[3]
  groups, quantiles = 0, false
  for i = 4, #args do
    local n = args[i]:match("^groups=(%d+)$")
    if n then
      groups = tonumber(n)
    elseif args[i] == "quantiles" then
      quantiles = true
    else
      error("ingest.lua: unknown argument " .. args[i])
    end
  end
  headers = { ["Content-Type"] = "application/json" }
  fixed = wrk.format("POST", wrk.path, headers, template)
  sent, ok, non2xx = 0, 0, 0
end

function request()
  sent = sent + 1
  if not unique then
    return fixed
  end
  local fingerprint = string.format("%s%d-%d", prefix, thread_no, sent)
  local body = template:gsub("@FINGERPRINT@", fingerprint):gsub("@MICROS@", string.format("%06d", sent % 1000000))
  if groups > 0 then
    body = body:gsub("@GROUP@", tostring(sent % groups))
  end
  return wrk.format("POST", wrk.path, headers, body)
end

function response(status, _headers, _body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    non2xx = non2xx + 1
  end
end

-- Fine near the tail, where merged p99s are read; 0 and 100 are the minimum and maximum.
local function quantile_grid(latency)
  local points = { string.format("[0,%d]", latency.min) }
  local function add(p)
    table.insert(points, string.format("[%g,%d]", p, latency:percentile(p)))
  end
  for p = 1, 97 do
    add(p)
  end
  for p = 971, 999 do
    add(p / 10)
  end
  add(99.95)
  add(99.99)
  table.insert(points, string.format("[100,%d]", latency.max))
  return table.concat(points, ",")
end

function done(summary, latency, _requests)
  local s, o, n = 0, 0, 0
  for _, thread in ipairs(threads) do
    s = s + thread:get("sent")
    o = o + thread:get("ok")
    n = n + thread:get("non2xx")
  end
  local e = summary.errors
  local extra = ""
  if threads[1]:get("quantiles") then -- init() ran in the threads' states, not in this one
    extra = ',"quantiles_us":[' .. (#latency > 0 and quantile_grid(latency) or "") .. "]"
  end
  io.write(string.format(
    'BENCH_JSON {"sent":%d,"ok":%d,"non2xx":%d,"errors":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d%s}\n',
    s, o, n, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), extra
  ))
end
