-- wrk script for bench/perf.py: POST the JSON bodies of BENCH_BODIES (one per line, cycled)
-- to BENCH_PATH, and print the summary as one JSON line at the end.
local requests = {}
local next_index = 1

function init(args)
  local path = os.getenv("BENCH_PATH")
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    requests[#requests + 1] = wrk.format("POST", path, headers, line)
  end
end

function request()
  local chosen = requests[next_index]
  next_index = next_index % #requests + 1
  return chosen
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
