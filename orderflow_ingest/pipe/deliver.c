/*
 * orderflow-deliver: what pipe(8) runs once per message and recipient.
 *
 * `orderflow-ingest deliver` execs it. It only hands the message to the long-running delivery
 * service (pipe/service.py) over a unix socket, in the wire format of pipe/protocol.py, and
 * exits with the service's answer. It is C because pipe(8) starts it once per message: a
 * Python interpreter alone costs ~8 ms of CPU, which on a 2-core host is a third of the whole
 * path's budget at 100 msg/s; this costs under 1 ms. Built by pipe/build.py.
 *
 *   orderflow-deliver [--config FILE] --sender S [--queue-id Q] -- RECIPIENT
 *
 * Settings: ORDERFLOW_DELIVER_SOCKET and ORDERFLOW_DELIVER_TIMEOUT, from the environment or
 * else the env file (--config, then $ORDERFLOW_CONFIG, then /etc/orderflow/ingest.env if it
 * exists), read as settings.py reads it: KEY=value lines, `export ` and one pair of matching
 * quotes stripped, nothing expanded.
 *
 * pipe(8) bounces on any status but 0, 71 and 75 and quotes what we print to a possibly forged
 * sender: so every failure here exits 75 with a short fixed text, never a path or an errno.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EX_OK 0
#define EX_NOUSER 67
#define EX_TEMPFAIL 75
#define VERSION "OFI1"
#define MAX_ENVELOPE (64 * 1024)
#define CHUNK (64 * 1024)
#define MAX_REPLY 4096
#define DEFAULT_CONFIG "/etc/orderflow/ingest.env"
#define DEFAULT_SOCKET "/run/orderflow/deliver.sock"
#define DEFAULT_TIMEOUT "240"

static const char MISCONFIGURED[] = "temporary failure (transport misconfigured)";
static const char UNAVAILABLE[] =
    "temporary failure (delivery service unavailable), try again later";
static const char DEADLINE[] = "temporary failure (deadline), try again later";

/* Print the short reason pipe(8) logs and exit. Async-signal-safe: used by the alarm. */
static void finish(int status, const char *text, size_t length) {
    if (length > 0) {
        ssize_t ignored = write(STDOUT_FILENO, text, length);
        ignored = write(STDOUT_FILENO, "\n", 1);
        (void)ignored;
    }
    _exit(status);
}

static void fail(const char *text) { finish(EX_TEMPFAIL, text, strlen(text)); }

static void on_deadline(int signum) {
    (void)signum;
    finish(EX_TEMPFAIL, DEADLINE, sizeof DEADLINE - 1);
}

/* A setting the client reads: its name, and its value from the env file (malloc'd) or NULL. */
struct setting {
    const char *name;
    char *from_file;
};

/* One pass over the env file at `path`, keeping each named setting's last value. */
static void read_settings(const char *path, struct setting *settings, size_t count,
                          int required_file) {
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        if (required_file)
            fail(MISCONFIGURED);
        return;
    }
    char *line = NULL;
    size_t capacity = 0;
    while (getline(&line, &capacity, file) != -1) {
        char *start = line, *end = line + strlen(line);
        while (isspace((unsigned char)*start))
            start++;
        while (end > start && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (strncmp(start, "export ", 7) == 0)
            for (start += 7; isspace((unsigned char)*start); start++)
                ;
        char *equals = strchr(start, '=');
        if (*start == '#' || equals == NULL)
            continue;
        char *key_end = equals;
        while (key_end > start && isspace((unsigned char)key_end[-1]))
            key_end--;
        size_t key_length = (size_t)(key_end - start);
        for (size_t index = 0; index < count; index++) {
            struct setting *wanted = &settings[index];
            if (strlen(wanted->name) != key_length || strncmp(start, wanted->name, key_length))
                continue;
            char *value = equals + 1;
            while (isspace((unsigned char)*value))
                value++;
            size_t length = strlen(value);
            if (length >= 2 && value[0] == value[length - 1] &&
                (value[0] == '"' || value[0] == '\'')) {
                value[length - 1] = '\0';
                value++;
            }
            free(wanted->from_file);
            wanted->from_file = strdup(value); /* the last assignment wins, as in settings.py */
        }
    }
    free(line);
    fclose(file);
}

/* The environment wins over the file, as in settings.py. */
static const char *setting_value(const struct setting *setting, const char *fallback) {
    const char *from_environment = getenv(setting->name);
    if (from_environment != NULL)
        return from_environment;
    return setting->from_file != NULL ? setting->from_file : fallback;
}

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

int main(int argc, char **argv) {
    const char *config = NULL, *sender = NULL, *queue_id = "", *recipient = NULL;
    int index = 1;
    for (; index < argc; index += 2) {
        if (strcmp(argv[index], "--") == 0)
            break;
        if (index + 1 >= argc)
            fail(MISCONFIGURED);
        if (strcmp(argv[index], "--config") == 0)
            config = argv[index + 1];
        else if (strcmp(argv[index], "--sender") == 0)
            sender = argv[index + 1];
        else if (strcmp(argv[index], "--queue-id") == 0)
            queue_id = argv[index + 1];
        else
            fail(MISCONFIGURED);
    }
    /* Exactly one recipient after `--`, which may itself start with `-`. */
    if (index + 2 != argc || sender == NULL)
        fail(MISCONFIGURED);
    recipient = argv[index + 1];

    if (config == NULL || *config == '\0') {
        const char *from_environment = getenv("ORDERFLOW_CONFIG");
        config = (from_environment && *from_environment) ? from_environment : DEFAULT_CONFIG;
    }
    struct setting settings[] = {{"ORDERFLOW_DELIVER_SOCKET", NULL},
                                 {"ORDERFLOW_DELIVER_TIMEOUT", NULL}};
    read_settings(config, settings, 2, strcmp(config, DEFAULT_CONFIG) != 0);
    const char *socket_path = setting_value(&settings[0], DEFAULT_SOCKET);
    const char *timeout_text = setting_value(&settings[1], DEFAULT_TIMEOUT);
    char *end = NULL;
    double timeout = strtod(timeout_text, &end);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (end == timeout_text || *end != '\0' || !(timeout > 0) || timeout > 86400 ||
        strlen(socket_path) >= sizeof address.sun_path)
        fail(MISCONFIGURED);
    strcpy(address.sun_path, socket_path);

    /* One deadline for the whole delivery, as the Python client has. */
    signal(SIGALRM, on_deadline);
    alarm((unsigned)timeout + 1);

    size_t payload = strlen(VERSION) + strlen(sender) + strlen(recipient) + strlen(queue_id) + 3;
    if (payload > MAX_ENVELOPE)
        fail(MISCONFIGURED);
    char *envelope = malloc(payload + 16);
    if (envelope == NULL)
        fail(UNAVAILABLE);
    int prefix = snprintf(envelope, 16, "%zu\n", payload);
    char *cursor = envelope + prefix;
    const char *fields[] = {VERSION, sender, recipient, queue_id};
    for (size_t field = 0; field < 4; field++) {
        size_t length = strlen(fields[field]);
        memcpy(cursor, fields[field], length);
        cursor += length;
        if (field < 3)
            *cursor++ = '\0';
    }

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0)
        fail(UNAVAILABLE);
    send_all(fd, envelope, (size_t)(cursor - envelope));

    static char buffer[CHUNK];
    for (;;) {
        ssize_t got = read(STDIN_FILENO, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            fail(UNAVAILABLE);
        if (got == 0)
            break;
        send_all(fd, buffer, (size_t)got);
    }
    if (shutdown(fd, SHUT_WR) != 0)
        fail(UNAVAILABLE);

    /* The answer: one line, `<status> <text>`. */
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
    if (status != EX_OK && status != EX_NOUSER && status != EX_TEMPFAIL)
        fail("temporary failure, try again later");
    /* Only printable ASCII reaches pipe(8)'s log and a bounce. */
    for (char *c = text; *c; c++)
        if (!isprint((unsigned char)*c))
            *c = '?';
    finish(status, text, status == EX_OK ? 0 : strlen(text));
}
