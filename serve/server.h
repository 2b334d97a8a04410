/* The gRPC front of `vitrine serve`, on the gRPC C core (not C++): vitrine.v1.Storefront
 * (Recommend, GetInfo) and grpc.health.v1.Health (Check, and Watch: a stream with one message per
 * status change, ended with UNAVAILABLE when the server stops).
 *
 * Several completion-queue threads, each with its own queue, accept calls, parse and validate
 * requests (protobuf -> the JSON form -> vt_request_parse, so the CLI and the server accept and
 * refuse exactly the same requests, with the same messages; tokenisation happens here, off the
 * engine threads) and hand them to the scheduler. The engine worker that ran a request encodes
 * and sends its answer. Every call's ops and buffers live in its struct until both of its tags
 * (the RECV_CLOSE_ON_SERVER batch and the answering batch) have completed. */
#ifndef VITRINE_SERVE_SERVER_H
#define VITRINE_SERVE_SERVER_H

#include "audit.h"
#include "metrics.h"
#include "sched.h"
#include "engine/status.h"

typedef struct vt_server_opts {
  const char *listen;      /* host:port; port 0: any free port */
  int cq_threads;          /* completion-queue threads (>= 1) */
  int max_message_bytes;   /* largest request and answer */
  int max_request_events;  /* events (and excluded ids) a request may carry */
  int log_requests;        /* one log line per Recommend */
  int max_batch;           /* reported by GetInfo */
  int max_connection_age_ms; /* GOAWAY after about this long (0: never) */
  int drain_timeout_ms;      /* the grace a connection so aged gives its calls */
  /* TLS (PEM text; NULL: plaintext): the server's certificate chain and key, and for mutual TLS
   * the CA that client certificates must be signed by */
  const char *tls_cert_pem, *tls_key_pem, *tls_client_ca_pem;
  /* the audit log (NULL: off): a sampled call's digest is taken where it is parsed, and the
   * worker that answers it hands its storefront to the log's ring */
  vt_audit *audit;
} vt_server_opts;

typedef struct vt_server vt_server;

/* Creates and starts the server before anything is loaded: health answers NOT_SERVING and
 * Recommend UNAVAILABLE ("starting") until vt_server_attach and vt_server_set_serving. *port gets
 * the bound port. */
int vt_server_start(vt_server **out, const vt_server_opts *o, vt_metrics *m, int *port,
                    vt_err *err);
/* Hands the server the scheduler (loaded and warmed up); it must outlive the server's use of it
 * (until vt_server_detach). The bundle and catalogues come with its generations. */
void vt_server_attach(vt_server *srv, vt_sched *s);
/* Health SERVING (after warm-up); Watch streams are told. */
void vt_server_set_serving(vt_server *srv);
/* After SIGTERM, first: health NOT_SERVING (Watch streams are told; the "liveness" service stays
 * SERVING) while Recommend calls are still accepted and answered, so that balancers and endpoint
 * lists take the server out before it refuses anything. */
void vt_server_linger(vt_server *srv);
/* Starts draining: health NOT_SERVING (Watch streams are told), new Recommend calls answered
 * UNAVAILABLE. */
void vt_server_drain(vt_server *srv);
/* The scheduler is about to be freed: the server stops using it (waits for a submit in flight). */
void vt_server_detach(vt_server *srv);
/* Ends the Watch streams, stops accepting connections, waits up to grace_ms for the calls still
 * open, cancels the rest, stops the completion-queue threads and frees everything. */
void vt_server_stop(vt_server *srv, long grace_ms);

/* Logging: one line per event to stderr, as `ts level event key=value ...` or, with json, one
 * JSON object per line. The variadic arguments are key, value string pairs ending with NULL; a
 * value that is a number is written unquoted in JSON. */
void vt_log_init(int json);
void vt_log(const char *level, const char *event, ...);

#endif
