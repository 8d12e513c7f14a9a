-- wrk script: POST /v1/jobs with a noop job and no wait (scenario 1, Switchyard and nginx alike).
wrk.method = "POST"
wrk.body = '{"type":"noop","input":{}}'
wrk.headers["Content-Type"] = "application/json"
