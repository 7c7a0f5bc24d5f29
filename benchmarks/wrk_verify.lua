-- wrk script for the forward-auth figure: cycles through the request mix (one "token<TAB>scope<TAB>ip"
-- per line of $CNX_BENCH_REQUESTS) as GET /v2/auth/verify?scope=<scope> (the requirement on the auth
-- URL, as an operator configures it) with Bearer and X-Forwarded-For headers; prints one JSON line at
-- the end. The bare app gets the same requests.
local reqs = {}
local path = os.getenv("CNX_BENCH_REQUESTS")
for line in io.lines(path) do
  local token, scope, ip = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)")
  if token then
    reqs[#reqs + 1] = wrk.format("GET", "/v2/auth/verify?scope=" .. scope, {
      ["Authorization"] = "Bearer " .. token,
      ["X-Forwarded-For"] = ip,
    })
  end
end
local i = 0

request = function()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
