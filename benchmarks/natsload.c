/* A minimal NATS request load generator: one TCP connection, CONCURRENCY requests in flight, each on its
 * own reply subject (_INBOX.lg.<slot>); a reply sends that slot's next request at once (closed loop).
 * Payloads come from a file, one per line, used in turn. Counts replies and their "code" during the
 * measured window (after a warm-up), keeps a latency histogram in microseconds, reports JSON on stdout.
 * Built by benchmarks/nats_bench.py with `gcc -O2`: a Python client caps near 50k requests/s here.
 *
 *   natsload HOST PORT SUBJECT PAYLOAD_FILE CONCURRENCY WARMUP_S SECONDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_MAX 2000000 /* us */
#define MAX_CODES 32

static unsigned *hist;
static char **payloads;
static size_t *payload_len;
static size_t n_payloads, next_payload;
static double *sent_at;
static char *out;
static size_t out_len, out_cap;
static const char *subject;
static char code_names[MAX_CODES][32];
static unsigned long code_counts[MAX_CODES];
static int n_codes;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void out_add(const char *data, size_t len) {
    if (out_len + len > out_cap) {
        out_cap = (out_len + len) * 2;
        out = realloc(out, out_cap);
    }
    memcpy(out + out_len, data, len);
    out_len += len;
}

static void send_request(int slot) {
    char head[256];
    size_t i = next_payload++ % n_payloads;
    int n = snprintf(head, sizeof head, "PUB %s _INBOX.lg.%d %zu\r\n", subject, slot, payload_len[i]);
    out_add(head, n);
    out_add(payloads[i], payload_len[i]);
    out_add("\r\n", 2);
    sent_at[slot] = now_s();
}

static void flush_out(int fd) {
    size_t done = 0;
    while (done < out_len) {
        ssize_t w = write(fd, out + done, out_len - done);
        if (w <= 0) { perror("write"); exit(1); }
        done += w;
    }
    out_len = 0;
}

static void count_code(const char *payload, size_t len) {
    const char *tag = "\"code\":\"";
    const char *p = memmem(payload, len, tag, 8);
    char name[32] = "none";
    if (p) {
        p += 8;
        size_t k = 0;
        while (p + k < payload + len && p[k] != '"' && k < 31) { name[k] = p[k]; k++; }
        name[k] = 0;
    }
    for (int i = 0; i < n_codes; i++)
        if (strcmp(code_names[i], name) == 0) { code_counts[i]++; return; }
    if (n_codes < MAX_CODES) { strcpy(code_names[n_codes], name); code_counts[n_codes++] = 1; }
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: natsload HOST PORT SUBJECT FILE CONCURRENCY WARMUP SECONDS\n"); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    subject = argv[3];
    int concurrency = atoi(argv[5]);
    double warmup = atof(argv[6]), seconds = atof(argv[7]);

    FILE *f = fopen(argv[4], "rb");
    if (!f) { perror("payload file"); return 1; }
    size_t cap = 1024;
    payloads = malloc(cap * sizeof *payloads);
    payload_len = malloc(cap * sizeof *payload_len);
    char *line = NULL; size_t lcap = 0; ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        if (!len) continue;
        if (n_payloads == cap) {
            cap *= 2;
            payloads = realloc(payloads, cap * sizeof *payloads);
            payload_len = realloc(payload_len, cap * sizeof *payload_len);
        }
        payloads[n_payloads] = malloc(len);
        memcpy(payloads[n_payloads], line, len);
        payload_len[n_payloads++] = len;
    }
    fclose(f);
    if (!n_payloads) { fprintf(stderr, "no payloads\n"); return 1; }

    hist = calloc(HIST_MAX + 1, sizeof *hist);
    sent_at = calloc(concurrency, sizeof *sent_at);
    out_cap = 1 << 20; out = malloc(out_cap);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    size_t bufcap = 1 << 22, buflen = 0;
    char *buf = malloc(bufcap);
    const char *hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"name\":\"natsload\"}\r\n"
                        "SUB _INBOX.lg.* 1\r\nPING\r\n";
    out_add(hello, strlen(hello));
    flush_out(fd);
    /* Wait for the PONG: the subscription is in place before the first request. */
    for (;;) {
        ssize_t r = read(fd, buf + buflen, bufcap - buflen);
        if (r <= 0) { perror("read"); return 1; }
        buflen += r;
        if (memmem(buf, buflen, "PONG\r\n", 6)) break;
        if (memmem(buf, buflen, "-ERR", 4)) { fprintf(stderr, "%.*s\n", (int)buflen, buf); return 1; }
    }
    buflen = 0;

    double start = now_s(), measure_from = start + warmup, end = measure_from + seconds;
    for (int s = 0; s < concurrency; s++) send_request(s);
    flush_out(fd);

    unsigned long replies = 0, measured = 0;
    int measuring = 0;
    struct rusage ru0, ru1;
    double t_measure = 0;
    for (;;) {
        ssize_t r = read(fd, buf + buflen, bufcap - buflen);
        if (r <= 0) { perror("read"); return 1; }
        buflen += r;
        double t = now_s();
        if (!measuring && t >= measure_from) { measuring = 1; getrusage(RUSAGE_SELF, &ru0); t_measure = t; }
        if (t >= end) break;
        size_t pos = 0;
        for (;;) {
            char *nl = memmem(buf + pos, buflen - pos, "\r\n", 2);
            if (!nl) break;
            size_t head_len = nl - (buf + pos);
            char *head = buf + pos;
            if (head_len >= 4 && memcmp(head, "MSG ", 4) == 0) {
                /* MSG <subject> <sid> [reply] <size> */
                char *last_sp = head + head_len;
                while (last_sp > head && *(last_sp - 1) != ' ') last_sp--;
                size_t size = strtoul(last_sp, NULL, 10);
                size_t total = head_len + 2 + size + 2;
                if (pos + total > buflen) break;
                char *subj = head + 4;
                char *dot = memchr(subj, ' ', head_len - 4);
                char *p = dot;
                while (p > subj && *(p - 1) != '.') p--;
                int slot = atoi(p);
                char *payload = nl + 2;
                replies++;
                if (measuring) {
                    measured++;
                    long us = (long)((t - sent_at[slot]) * 1e6);
                    hist[us > HIST_MAX ? HIST_MAX : (us < 0 ? 0 : us)]++;
                    count_code(payload, size);
                }
                if (slot >= 0 && slot < concurrency) send_request(slot);
                pos += total;
            } else if (head_len == 4 && memcmp(head, "PING", 4) == 0) {
                out_add("PONG\r\n", 6);
                pos += 6;
            } else if (head_len >= 4 && memcmp(head, "-ERR", 4) == 0) {
                fprintf(stderr, "%.*s\n", (int)head_len, head);
                return 1;
            } else {
                pos += head_len + 2; /* +OK, PONG, INFO */
            }
        }
        memmove(buf, buf + pos, buflen - pos);
        buflen -= pos;
        if (out_len) flush_out(fd);
    }
    double elapsed = now_s() - t_measure;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    unsigned long acc = 0;
    long p50 = -1, p99 = -1, p999 = -1;
    for (long us = 0; us <= HIST_MAX; us++) {
        acc += hist[us];
        if (p50 < 0 && acc * 2 >= measured) p50 = us;
        if (p99 < 0 && acc * 100 >= measured * 99) p99 = us;
        if (p999 < 0 && acc * 1000 >= measured * 999) { p999 = us; break; }
    }
    printf("{\"requests\":%lu,\"seconds\":%.3f,\"rps\":%.1f,\"p50_us\":%ld,\"p99_us\":%ld,\"p999_us\":%ld,"
           "\"cpu_s\":%.3f,\"codes\":{",
           measured, elapsed, measured / elapsed, p50, p99, p999, cpu);
    for (int i = 0; i < n_codes; i++) printf("%s\"%s\":%lu", i ? "," : "", code_names[i], code_counts[i]);
    printf("}}\n");
    return 0;
}
