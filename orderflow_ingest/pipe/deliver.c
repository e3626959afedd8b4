/*
 * orderflow-deliver: what pipe(8) runs once per message and recipient.
 *
 * `orderflow-ingest deliver` execs it. It only hands the message to the long-running delivery
 * service (pipe/service.py) over a unix socket, in the wire format of pipe/protocol.py, and
 * exits with the service's answer. It is C because pipe(8) starts it once per message: a
 * Python interpreter alone costs ~8 ms of CPU, which on a 2-core host is a third of the whole
 * path's budget at 100 msg/s; this costs under 1 ms, plus ~5 ms per MiB for the trailer's
 * sha256 (25 MiB: ~130 ms). Built by pipe/build.py.
 *
 *   orderflow-deliver [--config FILE] --sender S [--queue-id Q] -- RECIPIENT
 *
 * Settings: ORDERFLOW_DELIVER_SOCKET and ORDERFLOW_DELIVER_TIMEOUT, from the environment or
 * else the env file (--config, then $ORDERFLOW_CONFIG, then /etc/orderflow/ingest.env if it
 * exists), read as settings.py reads it: KEY=value lines, `export ` and one pair of matching
 * quotes stripped, nothing expanded. A named file that cannot be read is an error (75), never
 * silent defaults; the socket must be an absolute path (an empty one would be an abstract
 * socket anyone can bind).
 *
 * The message goes in counted chunks and ends with a trailer (byte count and sha256), sent
 * only after a clean end of standard input while pipe(8) is still our parent: killed, timed
 * out or cut off, the client sends no trailer and the service stores nothing (protocol.py).
 *
 * pipe(8) bounces on any status but 0, 71 and 75 and quotes what we print to a possibly forged
 * sender: so every failure here exits 75 with a short fixed text, never a path or an errno.
 * Statuses are <sysexits.h>'s names, as outcomes.py's os.EX_* are: EX_OK and EX_NOUSER only
 * when the service said so, else EX_TEMPFAIL. A usage or settings error is EX_TEMPFAIL too,
 * not EX_USAGE or EX_CONFIG, which pipe(8) turns into bounces (5.3.0, 5.3.5): a broken
 * master.cf line must keep mail queued until it is fixed, not return it.
 *
 * main() reads as the delivery goes: parse_arguments, load_settings, start_deadline,
 * connect_service, send_envelope, copy_message, read_reply.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

/* The facts shared with the Python side come from its source, as -D flags of pipe/build.py
 * (`orderflow-ingest build-deliver`): VERSION, MAX_ENVELOPE and CHUNK of pipe/protocol.py,
 * DEFAULT_CONFIG, DEFAULT_SOCKET, DEFAULT_TIMEOUT and MAX_DELIVER_TIMEOUT of settings.py. */
#if !defined(VERSION) || !defined(MAX_ENVELOPE) || !defined(CHUNK) ||                       \
    !defined(DEFAULT_CONFIG) || !defined(DEFAULT_SOCKET) || !defined(DEFAULT_TIMEOUT) ||    \
    !defined(MAX_DELIVER_TIMEOUT)
#error "compile with `orderflow-ingest build-deliver` (pipe/build.py passes the constants)"
#endif
#define HEADROOM 16 /* room for a chunk's "<len>\n" in front of its bytes */
_Static_assert(CHUNK > 0 && CHUNK <= 999999, "a chunk length is at most 6 digits (protocol.py)");
#define PF_EXITING 0x4 /* linux/sched.h: set when a task starts to exit, before it closes files */
#define MAX_REPLY 4096

static const char MISCONFIGURED[] = "temporary failure (transport misconfigured)";
static const char UNAVAILABLE[] =
    "temporary failure (delivery service unavailable), try again later";
static const char DEADLINE[] = "temporary failure (deadline), try again later";

/* finish - print the short reason pipe(8) logs, and exit; async-signal-safe (the alarm) */
_Noreturn static void finish(int status, const char *text, size_t length) {
    if (length > 0) {
        ssize_t ignored = write(STDOUT_FILENO, text, length);
        ignored = write(STDOUT_FILENO, "\n", 1);
        (void)ignored;
    }
    _exit(status);
}

/* fail - defer with a fixed text */
_Noreturn static void fail(const char *text) { finish(EX_TEMPFAIL, text, strlen(text)); }

/* on_deadline - SIGALRM: the one deadline of the whole delivery passed */
static void on_deadline(int signum) {
    (void)signum;
    finish(EX_TEMPFAIL, DEADLINE, sizeof DEADLINE - 1);
}

/* The env file is read exactly as settings.py's read_env_file reads it, so that a file the
 * services accept gives the client the same two values and a file they refuse stops the
 * client too (tests/test_deliver_settings_parity.py feeds both the same files):
 *  - UTF-8 text (anything else is refused); lines end at \n, \r or \r\n;
 *  - each line and key and value is stripped of what Python's str.strip() strips (ASCII
 *    blanks, \x1c-\x1f and the Unicode spaces), not only of C's isspace();
 *  - blank lines and lines starting with `#` are skipped, then `export ` is dropped;
 *  - any other line needs `KEY=value` with a non-empty key: a line without one is refused;
 *  - one pair of matching quotes around a value is removed, nothing is expanded;
 *  - the last assignment wins, and the environment wins over the file.
 * Keys the client does not read are left to the services, which refuse unknown ones at start. */

/* A setting the client reads: its name, and its value from the env file (malloc'd) or NULL. */
struct setting {
    const char *name;
    char *from_file;
    size_t length; /* of from_file, which may hold a NUL the file had */
};

/* utf8_valid - whether `length` bytes are UTF-8 as Python's strict codec decodes them */
static int utf8_valid(const unsigned char *text, size_t length) {
    size_t at = 0;
    while (at < length) {
        unsigned char lead = text[at], low = 0x80, high = 0xbf;
        size_t extra;
        if (lead < 0x80) {
            at++;
            continue;
        }
        if (lead >= 0xc2 && lead <= 0xdf)
            extra = 1;
        else if (lead >= 0xe0 && lead <= 0xef)
            extra = 2, low = lead == 0xe0 ? 0xa0 : 0x80, high = lead == 0xed ? 0x9f : 0xbf;
        else if (lead >= 0xf0 && lead <= 0xf4)
            extra = 3, low = lead == 0xf0 ? 0x90 : 0x80, high = lead == 0xf4 ? 0x8f : 0xbf;
        else
            return 0; /* a continuation byte first, an overlong lead, or beyond U+10FFFF */
        if (length - at - 1 < extra || text[at + 1] < low || text[at + 1] > high)
            return 0;
        for (size_t next = 2; next <= extra; next++)
            if (text[at + next] < 0x80 || text[at + next] > 0xbf)
                return 0;
        at += extra + 1;
    }
    return 1;
}

/* space_at - the byte length of a character str.isspace() accepts at `text`, else 0 */
static size_t space_at(const unsigned char *text, const unsigned char *end) {
    size_t left = (size_t)(end - text);
    if (left == 0)
        return 0;
    if (*text == ' ' || (*text >= '\t' && *text <= '\r') || (*text >= 0x1c && *text <= 0x1f))
        return 1;
    if (left >= 2 && text[0] == 0xc2 && (text[1] == 0x85 || text[1] == 0xa0))
        return 2; /* U+0085, U+00A0 */
    if (left >= 3) {
        unsigned long code = (unsigned long)text[0] << 16 | (unsigned long)text[1] << 8 | text[2];
        if (code == 0xe19a80 || (code >= 0xe28080 && code <= 0xe2808a) || code == 0xe280a8 ||
            code == 0xe280a9 || code == 0xe280af || code == 0xe2819f || code == 0xe38080)
            return 3; /* U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 */
    }
    return 0;
}

/* strip - narrow [*start, *end) as str.strip() does (valid UTF-8 assumed) */
static void strip(const unsigned char **start, const unsigned char **end) {
    for (size_t size; (size = space_at(*start, *end)) > 0;)
        *start += size;
    for (int again = 1; again;) {
        again = 0;
        for (size_t size = 1; size <= 3 && *end - *start >= (ptrdiff_t)size; size++)
            if (space_at(*end - size, *end) == size) {
                *end -= size, again = 1;
                break;
            }
    }
}

/* read_line - one line of the env file: skip it, refuse the file, or keep a setting's value */
static void read_line(const unsigned char *start, const unsigned char *end,
                      struct setting *settings, size_t count) {
    strip(&start, &end);
    if (start == end || *start == '#')
        return;
    if (end - start >= 7 && memcmp(start, "export ", 7) == 0) {
        start += 7;
        strip(&start, &end);
    }
    const unsigned char *equals = memchr(start, '=', (size_t)(end - start));
    const unsigned char *key = start, *key_end = equals;
    if (equals != NULL)
        strip(&key, &key_end);
    if (equals == NULL || key == key_end) /* settings.py: "expected KEY=value" */
        fail(MISCONFIGURED);
    const unsigned char *value = equals + 1, *value_end = end;
    strip(&value, &value_end);
    if (value_end - value >= 2 && *value == value_end[-1] && (*value == '"' || *value == '\''))
        value++, value_end--;
    for (size_t index = 0; index < count; index++) {
        struct setting *wanted = &settings[index];
        size_t key_length = (size_t)(key_end - key), length = (size_t)(value_end - value);
        if (strlen(wanted->name) != key_length || memcmp(key, wanted->name, key_length) != 0)
            continue;
        free(wanted->from_file); /* the last assignment wins, as in settings.py */
        wanted->from_file = malloc(length + 1);
        if (wanted->from_file == NULL)
            fail(UNAVAILABLE);
        memcpy(wanted->from_file, value, length);
        wanted->from_file[length] = '\0';
        wanted->length = length;
    }
}

/* read_settings - one pass over the env file at `path`, keeping each setting's last value */
static void read_settings(const char *path, struct setting *settings, size_t count,
                          int required_file) {
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        if (required_file || errno != ENOENT) /* only an absent default file means defaults */
            fail(MISCONFIGURED);
        return;
    }
    char *line = NULL;
    size_t capacity = 0;
    ssize_t got;
    while ((got = getline(&line, &capacity, file)) != -1) {
        const unsigned char *text = (const unsigned char *)line, *end = text + got;
        if (!utf8_valid(text, (size_t)got)) /* no sequence spans a \n: lines are checked alone */
            fail(MISCONFIGURED);
        for (const unsigned char *cut; (cut = memchr(text, '\r', (size_t)(end - text)));) {
            read_line(text, cut, settings, count); /* \r ends a line too, as in Python */
            text = cut + 1;
        }
        read_line(text, end, settings, count);
    }
    if (ferror(file)) /* a directory, an I/O error: the file was not read */
        fail(MISCONFIGURED);
    free(line);
    fclose(file);
}

/* setting_value - the environment wins over the file, as in settings.py; NULL: a NUL inside */
static const char *setting_value(const struct setting *setting, const char *fallback) {
    const char *from_environment = getenv(setting->name);
    if (from_environment != NULL)
        return from_environment;
    if (setting->from_file == NULL)
        return fallback;
    return strlen(setting->from_file) == setting->length ? setting->from_file : NULL;
}

/* seconds_valid - a timeout as settings.py takes it: plain decimal, > 0, at most a day */
static int seconds_valid(const char *text, double *seconds) {
    const char *at = text;
    if (!isdigit((unsigned char)*at))
        return 0;
    while (isdigit((unsigned char)*at))
        at++;
    if (*at == '.') {
        if (!isdigit((unsigned char)*++at))
            return 0;
        while (isdigit((unsigned char)*at))
            at++;
    }
    if (*at != '\0')
        return 0;
    *seconds = strtod(text, NULL);
    return *seconds > 0 && *seconds <= MAX_DELIVER_TIMEOUT;
}

/* socket_valid - an absolute path of UTF-8 that fits sun_path, as settings.py takes it */
static int socket_valid(const char *path, const struct sockaddr_un *address) {
    return path[0] == '/' && strlen(path) < sizeof address->sun_path &&
           utf8_valid((const unsigned char *)path, strlen(path));
}

/* send_all - send everything or defer: the service gone mid-message is a retry */
static void send_all(int fd, const char *data, size_t length) {
    while (length > 0) {
        ssize_t sent = send(fd, data, length, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            fail(UNAVAILABLE);
        }
        data += sent;
        length -= (size_t)sent;
    }
}

/* parent_alive - whether `parent` (pipe(8)) is still our parent and not dying
 *
 * A killed parent closes our input (a clean EOF) before we are reparented, so getppid() alone
 * races; /proc/PID/stat shows PF_EXITING from the start of its exit. Parent 1: it died before
 * we looked (init adopted us). Without a visible /proc (hidepid), getppid() is all there is. */
static int parent_alive(pid_t parent) {
    if (parent <= 1 || getppid() != parent)
        return 0;
    char path[32], stat[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)parent);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;
    ssize_t got = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (got <= 0)
        return 0;
    stat[got] = '\0';
    char *fields = strrchr(stat, ')'), state = 0; /* comm may hold spaces and parentheses */
    unsigned long flags = 0;
    if (fields == NULL || sscanf(fields + 1, " %c %*d %*d %*d %*d %*d %lu", &state, &flags) != 2)
        return 0;
    return state != 'Z' && state != 'X' && !(flags & PF_EXITING) && getppid() == parent;
}

/* SHA-256 (FIPS 180-4) for the trailer, so the client needs no library at build time. */
struct sha256 {
    uint32_t state[8];
    uint64_t length;
    unsigned char block[64];
    size_t used;
};

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

/* sha256_block - fold one 64-byte block into the state */
static void sha256_block(uint32_t *state, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++)
        w[i] = w[i - 16] + (ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3)) +
               w[i - 7] + (ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10));
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    state[0] += a, state[1] += b, state[2] += c, state[3] += d;
    state[4] += e, state[5] += f, state[6] += g, state[7] += h;
}

/* sha256_init - start a digest */
static void sha256_init(struct sha256 *ctx) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(ctx->state, initial, sizeof initial);
    ctx->length = 0;
    ctx->used = 0;
}

/* sha256_update - add bytes to a digest */
static void sha256_update(struct sha256 *ctx, const unsigned char *data, size_t length) {
    ctx->length += length;
    while (length > 0) {
        size_t take = 64 - ctx->used < length ? 64 - ctx->used : length;
        memcpy(ctx->block + ctx->used, data, take);
        ctx->used += take;
        data += take;
        length -= take;
        if (ctx->used == 64) {
            sha256_block(ctx->state, ctx->block);
            ctx->used = 0;
        }
    }
}

/* sha256_hex - pad, and write the digest as 64 lower-case hex digits and a NUL into `hex` */
static void sha256_hex(struct sha256 *ctx, char hex[65]) {
    uint64_t bits = ctx->length * 8;
    unsigned char pad[72] = {0x80};
    size_t pad_length = (ctx->used < 56 ? 56 : 120) - ctx->used;
    for (int i = 0; i < 8; i++)
        pad[pad_length + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(ctx, pad, pad_length + 8);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", (ctx->state[i / 4] >> (24 - 8 * (i % 4))) & 0xff);
}

/* The command line pipe(8) gives us (master.cf's argv=). */
struct arguments {
    const char *config; /* the env file named by --config, or NULL */
    const char *sender;
    const char *queue_id;
    const char *recipient;
};

/* parse_arguments - the options, then `--` and exactly one recipient */
static struct arguments parse_arguments(int argc, char **argv) {
    struct arguments arguments = {.queue_id = ""};
    int index = 1;
    for (; index < argc; index += 2) {
        if (strcmp(argv[index], "--") == 0)
            break;
        if (index + 1 >= argc)
            fail(MISCONFIGURED);
        if (strcmp(argv[index], "--config") == 0)
            arguments.config = argv[index + 1];
        else if (strcmp(argv[index], "--sender") == 0)
            arguments.sender = argv[index + 1];
        else if (strcmp(argv[index], "--queue-id") == 0)
            arguments.queue_id = argv[index + 1];
        else
            fail(MISCONFIGURED);
    }
    /* Exactly one recipient after `--`, which may itself start with `-`. */
    if (index + 2 != argc || arguments.sender == NULL)
        fail(MISCONFIGURED);
    arguments.recipient = argv[index + 1];
    if (arguments.config != NULL && *arguments.config == '\0') /* a broken master.cf line */
        fail(MISCONFIGURED);
    return arguments;
}

/* What the client needs of the settings, validated. */
struct client_settings {
    struct sockaddr_un address;
    double timeout;
};

/* load_settings - the socket and the deadline, from the environment or the env file */
static struct client_settings load_settings(const char *config) {
    if (config == NULL) {
        const char *from_environment = getenv("ORDERFLOW_CONFIG");
        config = (from_environment && *from_environment) ? from_environment : NULL;
    }
    int named = config != NULL; /* a file named by --config or $ORDERFLOW_CONFIG must be read */
    struct setting settings[] = {{"ORDERFLOW_DELIVER_SOCKET", NULL, 0},
                                 {"ORDERFLOW_DELIVER_TIMEOUT", NULL, 0}};
    read_settings(named ? config : DEFAULT_CONFIG, settings, 2, named);
    const char *socket_path = setting_value(&settings[0], DEFAULT_SOCKET);
    const char *timeout_text = setting_value(&settings[1], DEFAULT_TIMEOUT);
    struct client_settings result = {.address = {.sun_family = AF_UNIX}};
    if (socket_path == NULL || timeout_text == NULL ||
        !socket_valid(socket_path, &result.address) || !seconds_valid(timeout_text, &result.timeout))
        fail(MISCONFIGURED);
    strcpy(result.address.sun_path, socket_path);
#ifdef SETTINGS_PROBE /* tests/test_deliver_settings_parity.py: print what was read, stop */
    printf("%s\n%.17g\n", socket_path, result.timeout);
    exit(EX_OK);
#endif
    return result;
}

/* start_deadline - one alarm for the whole delivery, whatever it waits on */
static void start_deadline(double timeout) {
    struct sigaction on_alarm = {.sa_handler = on_deadline};
    sigemptyset(&on_alarm.sa_mask);
    if (sigaction(SIGALRM, &on_alarm, NULL) != 0)
        fail(UNAVAILABLE);
    alarm((unsigned)timeout + 1);
}

/* connect_service - a stream connection to the delivery service, or defer */
static int connect_service(const struct sockaddr_un *address) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (const struct sockaddr *)address, sizeof *address) != 0)
        fail(UNAVAILABLE);
    return fd;
}

/* send_envelope - the length line, then VERSION, sender, recipient, queue id NUL-separated */
static void send_envelope(int fd, const struct arguments *arguments) {
    const char *fields[] = {VERSION, arguments->sender, arguments->recipient,
                            arguments->queue_id};
    size_t payload = 3; /* the NULs between the four fields */
    for (size_t field = 0; field < 4; field++)
        payload += strlen(fields[field]);
    if (payload > MAX_ENVELOPE)
        fail(MISCONFIGURED);
    char *envelope = malloc(payload + 16);
    if (envelope == NULL)
        fail(UNAVAILABLE);
    char *cursor = envelope + snprintf(envelope, 16, "%zu\n", payload);
    for (size_t field = 0; field < 4; field++) {
        size_t length = strlen(fields[field]);
        memcpy(cursor, fields[field], length);
        cursor += length;
        if (field < 3)
            *cursor++ = '\0';
    }
    send_all(fd, envelope, (size_t)(cursor - envelope));
    free(envelope);
}

/* copy_message - standard input in chunks `<len>\n<bytes>`, then the trailer if complete */
static void copy_message(int fd, pid_t parent) {
    static char buffer[HEADROOM + CHUNK];
    struct sha256 digest;
    sha256_init(&digest);
    for (;;) {
        ssize_t got = read(STDIN_FILENO, buffer + HEADROOM, CHUNK);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            fail(UNAVAILABLE);
        if (got == 0)
            break;
        sha256_update(&digest, (unsigned char *)buffer + HEADROOM, (size_t)got);
        /* Each length is written just in front of its bytes: one send per chunk. */
        char header[HEADROOM];
        int length = snprintf(header, sizeof header, "%zd\n", got);
        memcpy(buffer + HEADROOM - length, header, (size_t)length);
        send_all(fd, buffer + HEADROOM - length, (size_t)length + (size_t)got);
    }
    /* A clean end of input: only now the trailer that makes the message complete. */
    if (!parent_alive(parent))
        fail(UNAVAILABLE);
    unsigned long long total = digest.length; /* before sha256_hex adds its padding */
    char hex[65], trailer[128];
    sha256_hex(&digest, hex);
    int trailer_length = snprintf(trailer, sizeof trailer, "0 %s %llu\n", hex, total);
    send_all(fd, trailer, (size_t)trailer_length);
    if (shutdown(fd, SHUT_WR) != 0)
        fail(UNAVAILABLE);
}

/* read_reply - relay the service's one line `<status> <text>` as our exit status */
_Noreturn static void read_reply(int fd) {
    static char reply[MAX_REPLY + 1];
    size_t used = 0;
    while (used < MAX_REPLY && memchr(reply, '\n', used) == NULL) {
        ssize_t got = recv(fd, reply + used, MAX_REPLY - used, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        used += (size_t)got;
    }
    close(fd);
    char *newline = memchr(reply, '\n', used);
    if (newline == NULL) /* no complete answer: the service died or never answered */
        fail(UNAVAILABLE);
    *newline = '\0';
    char *text = reply;
    int status = 0, digits = 0;
    for (; isdigit((unsigned char)*text) && digits < 4; text++, digits++)
        status = status * 10 + (*text - '0');
    if (digits == 0 || (*text != ' ' && *text != '\0'))
        fail("garbled reply from delivery service");
    if (*text == ' ')
        text++;
    /* Only the statuses of outcomes.py pass; any other would make pipe(8) bounce. */
    if (status != EX_OK && status != EX_NOUSER && status != EX_TEMPFAIL)
        fail("temporary failure, try again later");
    /* Only printable ASCII reaches pipe(8)'s log and a bounce. */
    for (char *c = text; *c; c++)
        if (!isprint((unsigned char)*c))
            *c = '?';
    finish(status, text, status == EX_OK ? 0 : strlen(text));
}

/* main - parse arguments and settings, hand the message over, relay the answer */
int main(int argc, char **argv) {
    pid_t parent = getppid(); /* first: pipe(8) may die while we start */
    struct arguments arguments = parse_arguments(argc, argv);
    struct client_settings settings = load_settings(arguments.config);
    start_deadline(settings.timeout);
    int fd = connect_service(&settings.address);
    send_envelope(fd, &arguments);
    copy_message(fd, parent);
    read_reply(fd);
}
