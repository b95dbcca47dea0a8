/*
 * ipcbench: libqb IPC load generator for integration-tests/bench-ipc.
 *
 *   ipcbench SERVICE ID N HEX [options]
 *
 * Connects with qb_ipcc_connect(SERVICE, 1 MiB) (as PVE::IPCC does), then
 * sends N requests {header id=ID, size=16+len} + payload (HEX, "-" for
 * empty) with qb_ipcc_sendv_recv, one at a time, and times each round trip
 * with clock_gettime(CLOCK_MONOTONIC). Every reply must carry error 0 (or
 * the value of --expect); replies that do not are counted as errors.
 *
 * Options:
 *   --warmup W        W untimed round trips before the timed ones (default 0)
 *   --time-cap S      stop the timed loop after S seconds (default 30)
 *   --stamp OFF START before every request (warm-up included), write
 *                     START + STEP * k as 10 decimal digits at payload offset
 *                     OFF, k = 0, 1, 2, ...: every request carries a fresh,
 *                     increasing timestamp (RRD updates must move forward)
 *   --stamp-step STEP increment of --stamp (default 1)
 *   --expect E        the error every reply must carry (default 0)
 *   --barrier         after connecting and warming up, print "ready" and
 *                     wait for one byte on stdin before the timed loop (so
 *                     that several copies start together)
 *   --lat-out FILE    write the latency of every timed round trip to FILE,
 *                     in ns, as native-endian uint64 in the order measured
 *                     (so that several clients' samples can be pooled)
 *   --pad P           send P zero bytes after the payload that the header's
 *                     size does not count (the C server's LOG_CLUSTER_MSG
 *                     checks the byte after the message, which is otherwise
 *                     whatever the ring holds there)
 *
 * Output (stdout), one line:
 *   count=<timed round trips done> seconds=<wall time of the timed loop>
 *   p50_us=<median latency> p99_us=<99th percentile latency>
 *   start=<CLOCK_MONOTONIC s at loop start> end=<... at loop end>
 *   errors=<replies with a wrong error or failed calls> first_error=<value>
 *   reply_bytes=<size of the last reply>
 * Percentiles are nearest-rank over the timed round trips.
 *
 * Exit status: 0 when connected and the loop ran (errors are reported, not
 * fatal), 2 on usage errors, 3 when the connection failed.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <qb/qbdefs.h>
#include <qb/qbipc_common.h>
#include <qb/qbipcc.h>

#define MAX_MSG (1024 * 1024)
#define RECV_TIMEOUT_MS 10000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int hexdigit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static unsigned char *parse_hex(const char *hex, size_t *len)
{
    size_t n = strcmp(hex, "-") == 0 ? 0 : strlen(hex);
    if (n % 2) {
        fprintf(stderr, "ipcbench: odd HEX length\n");
        exit(2);
    }
    unsigned char *out = malloc(n / 2 + 1);
    if (!out) {
        perror("malloc");
        exit(2);
    }
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexdigit(hex[2 * i]), lo = hexdigit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "ipcbench: bad HEX digit\n");
            exit(2);
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    *len = n / 2;
    return out;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest rank: the smallest value with at least p of the samples <= it */
static double percentile_us(const uint64_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0.0;
    size_t rank = (size_t)(p * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)sorted[rank - 1] / 1000.0;
}

struct stamp {
    int on;
    size_t off;
    unsigned long long start, step, k;
};

static void apply_stamp(struct stamp *st, unsigned char *payload)
{
    char digits[16];
    if (!st->on)
        return;
    snprintf(digits, sizeof digits, "%010llu", st->start + st->step * st->k);
    memcpy(payload + st->off, digits, 10);
    st->k++;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: ipcbench SERVICE ID N HEX [--warmup W] [--time-cap S] "
                        "[--stamp OFF START] [--stamp-step STEP] [--expect E] [--barrier] [--lat-out FILE] [--pad P]\n");
        return 2;
    }
    const char *service = argv[1];
    int32_t id = (int32_t)strtol(argv[2], NULL, 0);
    long n = strtol(argv[3], NULL, 0);
    size_t plen;
    unsigned char *payload = parse_hex(argv[4], &plen);
    long warmup = 0;
    double time_cap = 30.0;
    int32_t expect = 0;
    int barrier = 0;
    const char *lat_out = NULL;
    long pad = 0;
    struct stamp st = {0};
    st.step = 1;

    for (int i = 5; i < argc; i++) {
        if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) {
            warmup = strtol(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--time-cap") == 0 && i + 1 < argc) {
            time_cap = strtod(argv[++i], NULL);
        } else if (strcmp(argv[i], "--stamp") == 0 && i + 2 < argc) {
            st.on = 1;
            st.off = strtoul(argv[++i], NULL, 0);
            st.start = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--stamp-step") == 0 && i + 1 < argc) {
            st.step = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc) {
            expect = (int32_t)strtol(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--barrier") == 0) {
            barrier = 1;
        } else if (strcmp(argv[i], "--lat-out") == 0 && i + 1 < argc) {
            lat_out = argv[++i];
        } else if (strcmp(argv[i], "--pad") == 0 && i + 1 < argc) {
            pad = strtol(argv[++i], NULL, 0);
        } else {
            fprintf(stderr, "ipcbench: bad option %s\n", argv[i]);
            return 2;
        }
    }
    if (n < 1 || warmup < 0 || pad < 0 || pad > 4096 || (st.on && st.off + 10 > plen)) {
        fprintf(stderr, "ipcbench: bad N, warm-up or stamp offset\n");
        return 2;
    }

    uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)n);
    char *rbuf = malloc(MAX_MSG);
    if (!lat || !rbuf) {
        perror("malloc");
        return 2;
    }

    qb_ipcc_connection_t *conn = qb_ipcc_connect(service, MAX_MSG);
    if (!conn) {
        fprintf(stderr, "ipcbench: qb_ipcc_connect(%s): %s\n", service, strerror(errno));
        printf("connect_failed errno=%d\n", errno);
        return 3;
    }

    struct qb_ipc_request_header hdr;
    memset(&hdr, 0, sizeof hdr);
    hdr.id = id;
    hdr.size = (int32_t)(sizeof hdr + plen);
    static char zeros[4096];
    struct iovec iov[3] = {
        {.iov_base = &hdr, .iov_len = sizeof hdr},
        {.iov_base = payload, .iov_len = plen},
        {.iov_base = zeros, .iov_len = (size_t)pad},
    };
    int iovcnt = 3;

    long errors = 0;
    long long first_error = 0;
    long reply_bytes = 0;

    for (long i = 0; i < warmup; i++) {
        apply_stamp(&st, payload);
        ssize_t r = qb_ipcc_sendv_recv(conn, iov, iovcnt, rbuf, MAX_MSG, RECV_TIMEOUT_MS);
        if (r < (ssize_t)sizeof(struct qb_ipc_response_header)) {
            fprintf(stderr, "ipcbench: warm-up request failed: %zd\n", r);
            printf("warmup_failed result=%zd\n", r);
            qb_ipcc_disconnect(conn);
            return 3;
        }
    }

    if (barrier) {
        char c;
        printf("ready\n");
        fflush(stdout);
        if (read(STDIN_FILENO, &c, 1) != 1) {
            qb_ipcc_disconnect(conn);
            return 2;
        }
    }

    long done = 0;
    double t_start = now_s();
    double deadline = t_start + time_cap;
    for (long i = 0; i < n; i++) {
        apply_stamp(&st, payload);
        uint64_t t0 = now_ns();
        ssize_t r = qb_ipcc_sendv_recv(conn, iov, iovcnt, rbuf, MAX_MSG, RECV_TIMEOUT_MS);
        uint64_t t1 = now_ns();
        lat[done++] = t1 - t0;
        if (r < (ssize_t)sizeof(struct qb_ipc_response_header)) {
            if (!errors)
                first_error = r;
            errors++;
            if (r < 0 && r != -EAGAIN && r != -ETIMEDOUT)
                break; /* connection gone */
        } else {
            struct qb_ipc_response_header *res = (struct qb_ipc_response_header *)rbuf;
            reply_bytes = (long)r;
            if (res->error != expect || res->id != id) {
                if (!errors)
                    first_error = res->error;
                errors++;
            }
        }
        if ((i & 63) == 63 && now_s() > deadline)
            break;
    }
    double t_end = now_s();

    if (lat_out) {
        FILE *f = fopen(lat_out, "wb");
        if (!f || fwrite(lat, sizeof lat[0], (size_t)done, f) != (size_t)done || fclose(f) != 0) {
            fprintf(stderr, "ipcbench: cannot write %s: %s\n", lat_out, strerror(errno));
            printf("lat_out_failed\n");
            qb_ipcc_disconnect(conn);
            return 2;
        }
    }

    qsort(lat, (size_t)done, sizeof lat[0], cmp_u64);
    printf("count=%ld seconds=%.6f p50_us=%.2f p99_us=%.2f start=%.6f end=%.6f "
           "errors=%ld first_error=%lld reply_bytes=%ld\n",
           done, t_end - t_start, percentile_us(lat, (size_t)done, 0.50),
           percentile_us(lat, (size_t)done, 0.99), t_start, t_end, errors, first_error,
           reply_bytes);
    fflush(stdout);
    qb_ipcc_disconnect(conn);
    free(lat);
    free(rbuf);
    free(payload);
    return 0;
}
