/*
 * qbclient: a scriptable libqb IPC client for testing pmxcfs-ipc against the
 * real libqb client library (the one PVE::IPCC uses).
 *
 *   qbclient SERVICE [--max N] CMD [ARGS]...
 *
 * Connects with qb_ipcc_connect(SERVICE, N) (N defaults to 1 MiB, as
 * PVE::IPCC), then runs the commands in order. Output, one line each:
 *
 *   CONNECTED                     connection established
 *   CONNECT_FAIL <errno>          qb_ipcc_connect failed (errno as set, may be -1)
 *   REPLY <res> <id> <size> <error> <hex payload or ->
 *                                 a response (res = qb_ipcc_*recv result)
 *   FAIL <res>                    send/receive failed with res (negative errno)
 *   SENT <res>                    result of a send without receive
 *   REPEAT <ok> <usec>            result of a repeat command
 *   MAXSIZE <n>                   buffer size the server granted
 *
 * Commands:
 *   req ID HEX        header {id, 16 + len} + payload, qb_ipcc_sendv_recv
 *   raw HEX           the message exactly as given (header included)
 *   send ID HEX       like req but qb_ipcc_sendv only (no receive)
 *   rawsend HEX       like raw but send only
 *   recv              qb_ipcc_recv one response (2 s timeout)
 *   bufsize N         receive buffer size for later commands (default 1 MiB)
 *   maxsize           print the granted buffer size (qb_ipcc_get_buffer_size)
 *   repeat N ID HEX   N times req, print only the count of good replies
 *   sleep MS          sleep
 *   disconnect        qb_ipcc_disconnect (later commands need connect)
 *   connect           qb_ipcc_connect again
 *   exit              _exit(0) at once, without disconnecting
 *
 * HEX may be "-" for an empty payload.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <qb/qbdefs.h>
#include <qb/qbipcc.h>

static const char *service;
static size_t max_size = 1024 * 1024;
static qb_ipcc_connection_t *conn;
static char *rbuf;
static size_t rbuf_size = 1024 * 1024;

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode HEX into a new buffer; "-" is empty. Exits on bad input. */
static unsigned char *unhex(const char *hex, size_t *len) {
    if (strcmp(hex, "-") == 0) hex = "";
    size_t n = strlen(hex);
    if (n % 2) {
        fprintf(stderr, "odd hex length\n");
        exit(3);
    }
    unsigned char *out = malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "bad hex\n");
            exit(3);
        }
        out[i] = (unsigned char)(hi * 16 + lo);
    }
    *len = n / 2;
    return out;
}

static void print_reply(ssize_t res) {
    if (res < 0) {
        printf("FAIL %zd\n", res);
        return;
    }
    if ((size_t)res < sizeof(struct qb_ipc_response_header)) {
        printf("REPLY %zd - - - -\n", res);
        return;
    }
    struct qb_ipc_response_header *h = (struct qb_ipc_response_header *)rbuf;
    printf("REPLY %zd %d %d %d ", res, h->id, h->size, h->error);
    size_t dlen = (size_t)res - sizeof(*h);
    if (dlen == 0) printf("-");
    for (size_t i = 0; i < dlen; i++) printf("%02x", (unsigned char)rbuf[sizeof(*h) + i]);
    printf("\n");
}

static void do_connect(void) {
    conn = qb_ipcc_connect(service, max_size);
    if (!conn) {
        printf("CONNECT_FAIL %d\n", errno);
        fflush(stdout);
        exit(2);
    }
    printf("CONNECTED\n");
}

/* Build iovecs for a request with a generated header. */
static ssize_t send_req(int32_t id, const unsigned char *p, size_t len, int recv) {
    struct qb_ipc_request_header hdr;
    memset(&hdr, 0, sizeof(hdr));
    hdr.id = id;
    hdr.size = sizeof(hdr) + len;
    struct iovec iov[2] = {{&hdr, sizeof(hdr)}, {(void *)p, len}};
    if (recv) return qb_ipcc_sendv_recv(conn, iov, 2, rbuf, rbuf_size, -1);
    return qb_ipcc_sendv(conn, iov, 2);
}

static ssize_t send_raw(const unsigned char *p, size_t len, int recv) {
    struct iovec iov[1] = {{(void *)p, len}};
    if (recv) return qb_ipcc_sendv_recv(conn, iov, 1, rbuf, rbuf_size, -1);
    return qb_ipcc_sendv(conn, iov, 1);
}

static const char *arg(int argc, char **argv, int i) {
    if (i >= argc) {
        fprintf(stderr, "missing argument\n");
        exit(3);
    }
    return argv[i];
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: qbclient SERVICE [--max N] CMD...\n");
        return 3;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    service = argv[1];
    int i = 2;
    if (i + 1 < argc && strcmp(argv[i], "--max") == 0) {
        max_size = strtoul(argv[i + 1], NULL, 0);
        i += 2;
    }
    rbuf = malloc(rbuf_size);
    do_connect();

    while (i < argc) {
        const char *cmd = argv[i++];
        size_t len;
        unsigned char *p;
        if (strcmp(cmd, "req") == 0 || strcmp(cmd, "send") == 0) {
            int32_t id = (int32_t)strtol(arg(argc, argv, i), NULL, 0);
            p = unhex(arg(argc, argv, i + 1), &len);
            i += 2;
            ssize_t res = send_req(id, p, len, cmd[0] == 'r');
            if (cmd[0] == 'r') print_reply(res); else printf("SENT %zd\n", res);
            free(p);
        } else if (strcmp(cmd, "raw") == 0 || strcmp(cmd, "rawsend") == 0) {
            p = unhex(arg(argc, argv, i++), &len);
            ssize_t res = send_raw(p, len, cmd[3] == 0);
            if (cmd[3] == 0) print_reply(res); else printf("SENT %zd\n", res);
            free(p);
        } else if (strcmp(cmd, "recv") == 0) {
            print_reply(qb_ipcc_recv(conn, rbuf, rbuf_size, 2000));
        } else if (strcmp(cmd, "bufsize") == 0) {
            rbuf_size = strtoul(arg(argc, argv, i++), NULL, 0);
            rbuf = realloc(rbuf, rbuf_size ? rbuf_size : 1);
        } else if (strcmp(cmd, "maxsize") == 0) {
            printf("MAXSIZE %d\n", qb_ipcc_get_buffer_size(conn));
        } else if (strcmp(cmd, "repeat") == 0) {
            long n = strtol(arg(argc, argv, i), NULL, 0);
            int32_t id = (int32_t)strtol(arg(argc, argv, i + 1), NULL, 0);
            p = unhex(arg(argc, argv, i + 2), &len);
            i += 3;
            struct timeval t0, t1;
            gettimeofday(&t0, NULL);
            long ok = 0;
            for (long k = 0; k < n; k++) {
                ssize_t res = send_req(id, p, len, 1);
                struct qb_ipc_response_header *h = (struct qb_ipc_response_header *)rbuf;
                if (res >= (ssize_t)sizeof(*h) && h->id == id && h->size == res) ok++;
            }
            gettimeofday(&t1, NULL);
            long usec = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_usec - t0.tv_usec);
            printf("REPEAT %ld %ld\n", ok, usec);
            free(p);
        } else if (strcmp(cmd, "sleep") == 0) {
            usleep((useconds_t)strtoul(arg(argc, argv, i++), NULL, 0) * 1000);
        } else if (strcmp(cmd, "disconnect") == 0) {
            qb_ipcc_disconnect(conn);
            conn = NULL;
            printf("DISCONNECTED\n");
        } else if (strcmp(cmd, "connect") == 0) {
            do_connect();
        } else if (strcmp(cmd, "exit") == 0) {
            fflush(stdout);
            _exit(0);
        } else {
            fprintf(stderr, "unknown command %s\n", cmd);
            return 3;
        }
    }
    if (conn) qb_ipcc_disconnect(conn);
    return 0;
}
