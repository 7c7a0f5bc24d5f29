-- wrk script for the issuer figure: POST /v2/keys with the admin key from $CNX_BENCH_ADMIN_KEY.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CNX_BENCH_ADMIN_KEY")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name": "bench", "environment": "prod", "scopes": ["compute:read"]}'

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
