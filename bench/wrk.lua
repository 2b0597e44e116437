-- wrk script: one request shape from the environment, results as one JSON line.
--   WRK_METHOD, WRK_BODY, WRK_HEADERS ("Name: value" lines separated by "|"),
--   WRK_REQUESTS_FILE: optional file of pre-built requests, one per line:
--     header-value<TAB>body   (sent with WRK_SIGNED_HEADER: header-value; used for signed webhooks,
--     whose signatures and unique ids Lua cannot compute; each line is sent once, then the file wraps)
wrk.method = os.getenv("WRK_METHOD") or "GET"
wrk.body = os.getenv("WRK_BODY")
local header_spec = os.getenv("WRK_HEADERS") or ""
for pair in string.gmatch(header_spec, "[^|]+") do
  local name, value = string.match(pair, "^%s*([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

local prebuilt = {}
local index = 0
local signed_header = os.getenv("WRK_SIGNED_HEADER")
local requests_file = os.getenv("WRK_REQUESTS_FILE")

function init(args)
  if requests_file then
    for line in io.lines(requests_file) do
      local value, body = string.match(line, "^([^\t]*)\t(.*)$")
      if value then prebuilt[#prebuilt + 1] = {value, body} end
    end
  end
end

function request()
  if #prebuilt == 0 then return wrk.format() end
  index = index % #prebuilt + 1
  local item = prebuilt[index]
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers[signed_header] = item[1]
  return wrk.format(wrk.method, nil, headers, item[2])
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, errors.status, errors.connect, errors.read,
    errors.timeout))
end
