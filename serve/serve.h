/* `vitrine serve`: the gRPC server's entry point (options, lifecycle, signals). */
#ifndef VITRINE_SERVE_SERVE_H
#define VITRINE_SERVE_SERVE_H

/* argv[0] is "serve". Returns the process exit status: 0 after a clean drain, 2 on bad options or
 * a bad bundle/catalogue, 1 when the server cannot start. */
int vt_serve_main(int argc, char **argv);

#endif
