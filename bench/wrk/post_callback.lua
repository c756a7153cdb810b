-- wrk script: POST /callbacks/midjourney with a callback in the provider's format (a 4-image grid
-- with signed result URLs, as the provider sends them). Every request carries a new taskId
-- (run prefix - wrk thread - counter), so mjhook records and queues each one as real traffic would.
--   wrk -t2 -c32 -d12s -s bench/wrk/post_callback.lua http://127.0.0.1:8000/callbacks/midjourney -- <prefix>
-- At the end it prints one line "WRK_JSON {...}" for bench/ingress_ack.py.

local threads = {}
local prefix = "wrk"
local counter = 0

-- Runs in the main Lua state, once per wrk thread: number the threads.
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  prefix = args[1] or prefix
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = "Go-http-client/1.1"
end

local prompt_json = [[{\"prompt\":\"a lighthouse on a cliff at golden hour, volumetric light, ultra detailed --ar 1:1 --v 7\",\"model\":\"midjourney\",\"taskType\":\"mj_txt2img\",\"speed\":\"fast\",\"version\":\"7\",\"aspectRatio\":\"1:1\"}]]
local url = "https://tempfile.cdn-provider.example/files/%s/%d.png?exp=1767225600&sig=8f3c2a9d41b7e6c05a1d9e2f7b3c4d5e"

function request()
  counter = counter + 1
  local task_id = string.format("%s-%d-%d", prefix, thread_number, counter)
  local urls = {}
  for index = 0, 3 do
    urls[#urls + 1] = '"' .. string.format(url, task_id, index) .. '"'
  end
  local body = '{"code":200,"msg":"success","data":{"taskId":"' .. task_id .. '","promptJson":"'
    .. prompt_json .. '","resultUrls":[' .. table.concat(urls, ",") .. ']}}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
