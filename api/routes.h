/*
 * routes: what each endpoint of millrace-api does.
 *
 *   POST   /generate        validate, enqueue, wait for the job, answer its response
 *                           (with "stream": true: its events as they come, sse.c)
 *   POST   /jobs            validate, enqueue, answer 202 {id, status} at once
 *   GET    /jobs/{id}       the job's status (and its response when done);
 *                           ?wait=S long-polls until it finishes or S seconds pass
 *   GET    /jobs/{id}/stream its events (Server-Sent Events), resumable with
 *                           Last-Event-ID
 *   DELETE /jobs/{id}       cancel it, from any API instance
 *   GET    /health          200 when Redis answers and a runner is alive, else 503
 *   GET    /stats           backlog and runners (Flywheel's names), and more
 *   GET    /metrics         Prometheus text
 *
 * server.c calls routes_classify() when a request's headers have arrived,
 * routes_handle() when its body is complete, and routes_resume() when a
 * parked request has been woken.
 */
#pragma once

struct api_request;

enum routes_need {
    ROUTES_NEED_NONE = 0,
    ROUTES_NEED_BODY = 1, /* a JSON body: Content-Type and length are checked */
    ROUTES_NEED_AUTH = 2, /* an API key when keys are configured */
};

/*
 * Find the route for (method, url). Returns a combination of enum
 * routes_need and sets r->route; returns -1 after queueing a 404 or 405
 * answer itself.
 */
int routes_classify(struct api_request *r, const char *url, const char *method);

/* Serve a request whose body (if any) is complete. Returns MHD_YES/MHD_NO. */
int routes_handle(struct api_request *r, const char *url);

/* Answer a parked request that has been woken. Returns MHD_YES/MHD_NO. */
int routes_resume(struct api_request *r);
