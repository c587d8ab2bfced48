/*
 * conf_env.c - text values and where they come from: the process environment
 * (an explicit envp array), a dotenv file, and (through lx_conf_set_text) the
 * command-line flags. Also host and server URL parsing, shared with the JSON
 * layer.
 *
 * Dotenv syntax, as python-dotenv and docker compose read it:
 *   # comment                    blank lines and comment lines are skipped
 *   KEY=value                    unquoted: trimmed, " #..." starts a comment
 *   export KEY=value             an "export " prefix is allowed
 *   KEY = value                  spaces around '=' are allowed
 *   KEY='literal $ \ # text'     single quotes: taken as is, may span lines
 *   KEY="a\nb \"q\""             double quotes: \n \r \t \" \\ \$ escapes, may span lines
 *   KEY=                         an empty value (which llmux treats as unset)
 * Keys are [A-Za-z_][A-Za-z0-9_]*. No ${VAR} expansion. Anything else is an
 * error naming the file and line, never skipped silently.
 */
#include "conf_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "../core/log.h"
#include "../core/lx.h"

/* A .env beyond this is not a .env. */
#define DOTENV_MAX_BYTES (1u << 20)

struct dotenv_parser {
    const char *p;   /* next byte */
    const char *end; /* one past the last byte */
    int line;        /* line of p, 1-based */
    char *val;       /* the value being read; as large as the file, so never full */
    size_t val_len;
};

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_key_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_key_char(char c)
{
    return is_key_start(c) || (c >= '0' && c <= '9');
}

static void skip_blanks(struct dotenv_parser *ps)
{
    while (ps->p < ps->end && is_blank(*ps->p))
        ps->p++;
}

/* True at the end of a line (or of the file); consumes the newline. */
static bool at_eol(struct dotenv_parser *ps)
{
    if (ps->p < ps->end && *ps->p == '\r')
        ps->p++;
    if (ps->p >= ps->end)
        return true;
    if (*ps->p == '\n') {
        ps->p++;
        ps->line++;
        return true;
    }
    return false;
}

static void skip_line(struct dotenv_parser *ps)
{
    while (ps->p < ps->end && *ps->p != '\n')
        ps->p++;
    if (ps->p < ps->end) {
        ps->p++;
        ps->line++;
    }
}

/* After a closing quote: blanks, then an optional comment, then the line end. */
static int quoted_tail(struct dotenv_parser *ps)
{
    skip_blanks(ps);
    if (ps->p < ps->end && *ps->p == '#') {
        skip_line(ps);
        return 0;
    }
    return at_eol(ps) ? 0 : LX_EINVAL;
}

/* A quoted value; ps->p is on the opening quote. Takes nothing on error. */
static int parse_quoted(struct dotenv_parser *ps, const char **why)
{
    char q = *ps->p++;

    while (ps->p < ps->end && *ps->p != q) {
        char c = *ps->p++;

        if (c == '\n')
            ps->line++;
        if (c == '\\' && q == '"' && ps->p < ps->end) {
            char e = *ps->p;

            if (e == 'n' || e == 'r' || e == 't' || e == '"' || e == '\\' || e == '$') {
                c = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
                ps->p++;
            }
        }
        ps->val[ps->val_len++] = c;
    }
    if (ps->p >= ps->end) {
        *why = q == '"' ? "unterminated double-quoted value" : "unterminated single-quoted value";
        return LX_EINVAL;
    }
    ps->p++;
    if (quoted_tail(ps) < 0) {
        *why = "unexpected text after the closing quote";
        return LX_EINVAL;
    }
    return 0;
}

/* An unquoted value: the rest of the line, trimmed, up to a " #" comment. */
static void parse_unquoted(struct dotenv_parser *ps)
{
    const char *start = ps->p;
    const char *stop;

    while (ps->p < ps->end && *ps->p != '\n' && *ps->p != '\r') {
        if (*ps->p == '#' && (ps->p == start || is_blank(ps->p[-1])))
            break;
        ps->p++;
    }
    stop = ps->p;
    while (stop > start && is_blank(stop[-1]))
        stop--;
    memcpy(ps->val, start, (size_t)(stop - start));
    ps->val_len = (size_t)(stop - start);
    skip_line(ps);
}

static void dotenv_add(struct lx_conf_dotenv *d, const char *key, size_t key_len,
                       const struct dotenv_parser *ps, int line)
{
    struct lx_conf_dotenv_entry *e;

    d->v = lx_realloc(d->v, (d->n + 1) * sizeof(*d->v));
    e = &d->v[d->n++];
    e->key = lx_strndup(key, key_len);
    e->value = lx_strndup(ps->val, ps->val_len);
    e->line = line;
}

static int dotenv_parse(struct lx_conf_dotenv *d, const char *text, size_t len, char *err,
                        size_t errlen)
{
    struct dotenv_parser ps = {.p = text, .end = text + len, .line = 1};
    const char *why = NULL;
    int rc = 0;

    ps.val = lx_malloc(len + 1);
    /* A UTF-8 byte order mark some editors write. */
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        ps.p += 3;
    while (ps.p < ps.end) {
        const char *key;
        size_t key_len;
        int key_line;

        skip_blanks(&ps);
        if (at_eol(&ps))
            continue;
        if (*ps.p == '#') {
            skip_line(&ps);
            continue;
        }
        if (ps.end - ps.p > 7 && memcmp(ps.p, "export", 6) == 0 && is_blank(ps.p[6])) {
            ps.p += 7;
            skip_blanks(&ps);
        }
        key = ps.p;
        key_line = ps.line;
        if (ps.p >= ps.end || !is_key_start(*ps.p)) {
            why = "expected KEY=VALUE";
            goto out_error;
        }
        while (ps.p < ps.end && is_key_char(*ps.p))
            ps.p++;
        key_len = (size_t)(ps.p - key);
        skip_blanks(&ps);
        if (ps.p >= ps.end || *ps.p != '=') {
            why = "expected '=' after the key";
            goto out_error;
        }
        ps.p++;
        skip_blanks(&ps);
        ps.val_len = 0;
        if (ps.p < ps.end && (*ps.p == '"' || *ps.p == '\'')) {
            if (parse_quoted(&ps, &why) < 0) {
                ps.line = key_line;
                goto out_error;
            }
        } else {
            parse_unquoted(&ps);
        }
        dotenv_add(d, key, key_len, &ps, key_line);
    }
    goto out;

out_error:
    lx_conf_fmt(err, errlen, "%s:%d: %s", d->path, ps.line, why);
    rc = LX_EINVAL;
out:
    free(ps.val);
    return rc;
}

int lx_conf_dotenv_read(struct lx_conf_dotenv *d, const char *path, char *err, size_t errlen)
{
    struct stat st;
    char *text = NULL;
    size_t len;
    FILE *f;
    int rc;

    memset(d, 0, sizeof(*d));
    f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        lx_conf_fmt(err, errlen, "%s: %s", path, strerror(errno));
        return LX_EINVAL;
    }
    d->path = lx_strdup(path);
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        lx_conf_fmt(err, errlen, "%s: not a regular file", path);
        rc = LX_EINVAL;
        goto out_close;
    }
    if ((uint64_t)st.st_size > DOTENV_MAX_BYTES) {
        lx_conf_fmt(err, errlen, "%s: larger than %u bytes", path, DOTENV_MAX_BYTES);
        rc = LX_EINVAL;
        goto out_close;
    }
    text = lx_malloc((size_t)st.st_size + 1);
    len = fread(text, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        lx_conf_fmt(err, errlen, "%s: read error", path);
        rc = LX_EINVAL;
        goto out_free;
    }
    text[len] = '\0';
    if (memchr(text, '\0', len)) {
        lx_conf_fmt(err, errlen, "%s: contains a NUL byte", path);
        rc = LX_EINVAL;
        goto out_free;
    }
    rc = dotenv_parse(d, text, len, err, errlen);

out_free:
    free(text);
out_close:
    fclose(f);
    if (rc < 0)
        lx_conf_dotenv_free(d);
    return rc;
}

void lx_conf_dotenv_free(struct lx_conf_dotenv *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].key);
        free(d->v[i].value);
    }
    free(d->v);
    free(d->path);
    memset(d, 0, sizeof(*d));
}

const char *lx_conf_dotenv_get(const struct lx_conf_dotenv *d, const char *name, int *line)
{
    /* Walk backwards: a key given twice takes its last value. */
    for (size_t i = d->n; i-- > 0;) {
        if (strcmp(d->v[i].key, name) == 0) {
            if (line)
                *line = d->v[i].line;
            return d->v[i].value;
        }
    }
    return NULL;
}

const char *lx_conf_env_get(char **envp, const char *name)
{
    size_t n = strlen(name);

    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

/* ---- text values: the environment, .env and flags ---- */

/* 0, -1 (not an integer) or -2 (overflows long long). */
static int parse_ll(const char *v, long long *out)
{
    const char *p = v;
    char *end;

    if (*p == '+' || *p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    errno = 0;
    *out = strtoll(v, &end, 10);
    if (*end)
        return -1;
    return errno == ERANGE ? -2 : 0;
}

static int parse_num(const char *v, double *out)
{
    char *end;

    if (!*v || strspn(v, "0123456789.eE+-") != strlen(v))
        return -1;
    *out = strtod(v, &end);
    return *end || !isfinite(*out) ? -1 : 0;
}

/* 1 (on, true, yes, 1), 0 (off, false, no, 0), any case; -1 otherwise. */
static int parse_bool(const char *v)
{
    static const char *const on[] = {"on", "true", "yes", "1"};
    static const char *const off[] = {"off", "false", "no", "0"};

    for (size_t i = 0; i < ARRAY_SIZE(on); i++) {
        if (strcasecmp(v, on[i]) == 0)
            return 1;
        if (strcasecmp(v, off[i]) == 0)
            return 0;
    }
    return -1;
}

/* Control characters or spaces in <n> bytes. */
static bool has_ctl_or_space(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] <= 0x20 || v[i] == 0x7f)
            return true;
    return false;
}

static bool has_ctl(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v < 0x20 || *v == 0x7f)
            return true;
    return false;
}

int lx_conf_host_parse(const char *in, size_t len, char **out, const char **why)
{
    unsigned char addr[16];
    char tmp[256];
    bool bracketed;
    size_t i;

    if (len == 0 || len >= sizeof(tmp)) {
        *why = len ? "host name too long" : "empty host";
        return LX_EINVAL;
    }
    memcpy(tmp, in, len);
    tmp[len] = '\0';
    bracketed = tmp[0] == '[';
    if (bracketed) {
        if (len < 3 || tmp[len - 1] != ']') {
            *why = "unbalanced '[' in the IPv6 address";
            return LX_EINVAL;
        }
        tmp[len - 1] = '\0';
        memmove(tmp, tmp + 1, len - 1);
    }
    if (bracketed || strchr(tmp, ':')) {
        if (inet_pton(AF_INET6, tmp, addr) != 1) {
            *why = "not a valid IPv6 address";
            return LX_EINVAL;
        }
        *out = lx_strdup(tmp);
        return 0;
    }
    if (strspn(tmp, "0123456789.") == strlen(tmp)) {
        if (inet_pton(AF_INET, tmp, addr) != 1) {
            *why = "not a valid IPv4 address";
            return LX_EINVAL;
        }
        *out = lx_strdup(tmp);
        return 0;
    }
    for (i = 0; tmp[i]; i++) {
        char c = tmp[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_')) {
            *why = "not a valid host name";
            return LX_EINVAL;
        }
    }
    if (tmp[0] == '-' || tmp[0] == '.') {
        *why = "not a valid host name";
        return LX_EINVAL;
    }
    *out = lx_strdup(tmp);
    return 0;
}

/* "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT"; an absent host keeps the current one. */
static int set_listen(struct lx_conf_build *b, const char *v, const char *who, char *err,
                      size_t errlen)
{
    const char *colon, *port_s, *why = NULL;
    char *host = NULL;
    long long port;

    if (v[0] == '[') {
        const char *close = strchr(v, ']');

        if (!close || close[1] != ':') {
            lx_conf_fmt(err, errlen, "%s: \"%s\": expected [IPV6]:PORT", who, v);
            return LX_EINVAL;
        }
        colon = close + 1;
    } else {
        colon = strrchr(v, ':');
        if (colon && memchr(v, ':', (size_t)(colon - v))) {
            lx_conf_fmt(err, errlen, "%s: \"%s\": IPv6 addresses need brackets, e.g. [::1]:8000",
                        who, v);
            return LX_EINVAL;
        }
    }
    port_s = colon ? colon + 1 : v;
    if (parse_ll(port_s, &port) < 0 || port < 0 || port > 65535 || *port_s == '+' ||
        *port_s == '-') {
        lx_conf_fmt(err, errlen, "%s: \"%s\": expected HOST:PORT with a port in 0..65535", who, v);
        return LX_EINVAL;
    }
    if (colon && colon > v && lx_conf_host_parse(v, (size_t)(colon - v), &host, &why) < 0) {
        lx_conf_fmt(err, errlen, "%s: \"%s\": %s", who, v, why);
        return LX_EINVAL;
    }
    if (host) {
        free(b->conf.listen_host);
        b->conf.listen_host = host;
    }
    b->conf.listen_port = (int)port;
    return 0;
}

/* "http://a:8000, http://b:8000": blanks around items and empty items are skipped. */
static int set_nodes_text(struct lx_conf_build *b, const char *v, const char *who, char *err,
                          size_t errlen)
{
    struct lx_conf_server *servers = NULL;
    size_t n = 0;
    const char *p = v;
    int rc = 0;

    while (*p) {
        const char *start, *end;
        char why[160];
        char *item;

        p += strspn(p, " \t");
        start = p;
        p += strcspn(p, ",");
        end = p;
        if (*p == ',')
            p++;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end == start)
            continue;
        item = lx_strndup(start, (size_t)(end - start));
        servers = lx_realloc(servers, (n + 1) * sizeof(*servers));
        memset(&servers[n], 0, sizeof(*servers));
        rc = lx_conf_url_parse(&servers[n++], item, why, sizeof(why));
        if (rc < 0) {
            lx_conf_fmt(err, errlen, "%s: \"%.200s\": %s", who, item, why);
            free(item);
            goto out_free;
        }
        servers[n - 1].name = lx_strdup(servers[n - 1].url);
        servers[n - 1].weight = 1;
        free(item);
    }
    if (n == 0) {
        lx_conf_fmt(err, errlen, "%s: expected at least one URL", who);
        rc = LX_EINVAL;
        goto out_free;
    }
    rc = lx_conf_servers_check_unique(servers, n, who, err, errlen);
    if (rc < 0)
        goto out_free;
    lx_conf_store_nodes(b, servers, n);
    return 0;

out_free:
    lx_conf_servers_free(servers, n);
    return rc;
}

int lx_conf_set_text(struct lx_conf_build *b, const struct lx_conf_setting *s, const char *val,
                     const char *who, char *err, size_t errlen)
{
    const char *canon, *why = NULL;
    char *host = NULL;
    long long ll;
    double d;
    int rc;

    /* Checked first so that no message below echoes a newline. */
    if (has_ctl(val)) {
        lx_conf_fmt(err, errlen, "%s: contains control characters", who);
        return LX_EINVAL;
    }
    switch (s->kind) {
    case LX_CONF_K_INT:
    case LX_CONF_K_U64:
        rc = parse_ll(val, &ll);
        if (rc == -2) {
            lx_conf_fmt(err, errlen, "%s: \"%.64s\" is out of range (%lld..%lld)", who, val, s->min,
                        s->max);
            return LX_EINVAL;
        }
        if (rc < 0) {
            lx_conf_fmt(err, errlen, "%s: \"%.64s\" is not an integer", who, val);
            return LX_EINVAL;
        }
        return lx_conf_store_int(b, s, ll, who, err, errlen);
    case LX_CONF_K_SECS:
    case LX_CONF_K_SECS_OFF:
    case LX_CONF_K_FLOAT:
    case LX_CONF_K_NUM:
        if (parse_num(val, &d) < 0) {
            lx_conf_fmt(err, errlen, "%s: \"%.64s\" is not a number%s", who, val,
                        lx_conf_num_unit(s));
            return LX_EINVAL;
        }
        return lx_conf_store_secs(b, s, d, who, err, errlen);
    case LX_CONF_K_BOOL:
        rc = parse_bool(val);
        if (rc < 0) {
            lx_conf_fmt(err, errlen,
                        "%s: \"%.64s\" is not a boolean (expected on or off, true or false, "
                        "yes or no, 1 or 0)",
                        who, val);
            return LX_EINVAL;
        }
        lx_conf_store_bool(b, s, rc == 1);
        return 0;
    case LX_CONF_K_HOST:
        if (lx_conf_host_parse(val, strlen(val), &host, &why) < 0) {
            lx_conf_fmt(err, errlen, "%s: \"%.64s\": %s", who, val, why);
            return LX_EINVAL;
        }
        lx_conf_store_str(b, s, host);
        return 0;
    case LX_CONF_K_STRATEGY:
        canon = lx_conf_strategy_canonical(val);
        if (!canon) {
            lx_conf_fmt(err, errlen, "%s: unknown strategy \"%.64s\" (expected one of %s)", who,
                        val, lx_conf_strategy_list());
            return LX_EINVAL;
        }
        lx_conf_store_str(b, s, lx_strdup(canon));
        return 0;
    case LX_CONF_K_LOGLEVEL:
        rc = lx_log_level_parse(val);
        if (rc < 0) {
            lx_conf_fmt(err, errlen,
                        "%s: unknown log level \"%.64s\" (expected debug, info, warn or error)",
                        who, val);
            return LX_EINVAL;
        }
        lx_conf_store_str(b, s, lx_strdup((const char *[]){"debug", "info", "warn", "error"}[rc]));
        return 0;
    case LX_CONF_K_URLPATH:
        if (val[0] != '/' || strpbrk(val, " #")) {
            lx_conf_fmt(err, errlen, "%s: \"%.64s\" is not an absolute URL path like /health", who,
                        val);
            return LX_EINVAL;
        }
        lx_conf_store_str(b, s, lx_strdup(val));
        return 0;
    case LX_CONF_K_OPTSTR:
    case LX_CONF_K_SECRET:
    case LX_CONF_K_MODEL:
        if (!*val || (s->kind == LX_CONF_K_MODEL && strcmp(val, "*") == 0))
            lx_conf_store_str(b, s, NULL);
        else
            lx_conf_store_str(b, s, lx_strdup(val));
        return 0;
    case LX_CONF_K_LISTEN:
        return set_listen(b, val, who, err, errlen);
    case LX_CONF_K_NODES:
        return set_nodes_text(b, val, who, err, errlen);
    default:
        LX_ASSERT(!"setting kind without a value");
        return LX_EINVAL;
    }
}

static const char userinfo_why[] = "user info in URLs is not supported (use \"api_key\")";

/* The port text <q> of <n> bytes: 1..65535 in at most five digits. */
static int port_parse(const char *q, size_t n, long *port, char *why, size_t whylen)
{
    long v = 0;

    if (n == 0 || n > 5 || strspn(q, "0123456789") < n) {
        lx_conf_fmt(why, whylen, "invalid port");
        return LX_EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (q[i] - '0');
    if (v < 1 || v > 65535) {
        lx_conf_fmt(why, whylen, "port %ld is out of range (1..65535)", v);
        return LX_EINVAL;
    }
    *port = v;
    return 0;
}

/*
 * http-parser refused the URL, whose authority is the <n> bytes at <a>: says
 * why, with the checks in the order they are reported when it parses (user
 * info, brackets, port, host), so each mistake keeps its own message.
 */
static void authority_why(const char *a, size_t n, char *why, size_t whylen)
{
    const char *end = a + n, *host_end, *hwhy = NULL;
    char *host = NULL;
    long port;

    if (memchr(a, '@', n)) {
        lx_conf_fmt(why, whylen, "%s", userinfo_why);
        return;
    }
    if (n > 0 && *a == '[') {
        host_end = memchr(a, ']', n);
        if (!host_end) {
            lx_conf_fmt(why, whylen, "unbalanced '[' in the IPv6 address");
            return;
        }
        host_end++;
        if (host_end < end && *host_end != ':') {
            lx_conf_fmt(why, whylen, "expected ':' after the IPv6 address");
            return;
        }
    } else {
        host_end = memchr(a, ':', n);
        if (!host_end)
            host_end = end;
    }
    if (host_end < end &&
        port_parse(host_end + 1, (size_t)(end - host_end - 1), &port, why, whylen) < 0)
        return;
    if (lx_conf_host_parse(a, (size_t)(host_end - a), &host, &hwhy) < 0) {
        lx_conf_fmt(why, whylen, "%s", hwhy);
        return;
    }
    /* Not reached: http-parser accepts whatever passes the checks above. */
    free(host);
    lx_conf_fmt(why, whylen, "expected http://HOST[:PORT][/PATH]");
}

int lx_conf_url_parse(struct lx_conf_server *s, const char *url, char *why, size_t whylen)
{
    const char *p, *end, *host_at, *path, *hwhy = NULL;
    size_t len = strlen(url), host_len;
    struct http_parser_url u;
    char *host = NULL;
    long port = 80;

    while (len > 0 && url[len - 1] == '/')
        len--;
    if (strncasecmp(url, "https://", 8) == 0) {
        lx_conf_fmt(why, whylen, "https upstreams are not supported yet");
        return LX_EINVAL;
    }
    if (strncasecmp(url, "http://", 7) != 0) {
        lx_conf_fmt(why, whylen,
                    strstr(url, "://") ? "unsupported scheme (only http:// is supported)"
                                       : "expected http://HOST[:PORT][/PATH]");
        return LX_EINVAL;
    }
    p = url + 7;
    end = url + len;
    if (p >= end) {
        lx_conf_fmt(why, whylen, "missing host");
        return LX_EINVAL;
    }
    if (has_ctl_or_space(p, (size_t)(end - p))) {
        lx_conf_fmt(why, whylen, "contains spaces or control characters");
        return LX_EINVAL;
    }
    if (memchr(p, '?', (size_t)(end - p)) || memchr(p, '#', (size_t)(end - p))) {
        lx_conf_fmt(why, whylen, "query strings and fragments are not allowed");
        return LX_EINVAL;
    }
    /* http-parser's offsets are 16-bit, so a longer URL is parsed up to there:
     * enough when its path starts before (the path is taken whole below);
     * if not, the authority is too long to be valid and authority_why says so. */
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, LX_MIN(len, UINT16_MAX), 0, &u) != 0 ||
        (len > UINT16_MAX && !(u.field_set & (1 << UF_PATH)))) {
        authority_why(p, LX_MIN(strcspn(p, "/"), (size_t)(end - p)), why, whylen);
        return LX_EINVAL;
    }
    /* The host with its brackets: host parsing wants to know it was IPv6. */
    host_at = url + u.field_data[UF_HOST].off;
    host_len = u.field_data[UF_HOST].len;
    if (host_at[-1] == '[') {
        host_at--;
        host_len += 2;
    }
    /* Anything between "http://" and the host is user info ("http://@h" too). */
    if (host_at != p) {
        lx_conf_fmt(why, whylen, "%s", userinfo_why);
        return LX_EINVAL;
    }
    if (u.field_set & (1 << UF_PORT)) {
        const char *q = url + u.field_data[UF_PORT].off;

        if (port_parse(q, u.field_data[UF_PORT].len, &port, why, whylen) < 0)
            return LX_EINVAL;
    }
    if (lx_conf_host_parse(host_at, host_len, &host, &hwhy) < 0) {
        lx_conf_fmt(why, whylen, "%s", hwhy);
        return LX_EINVAL;
    }
    /* No query or fragment (refused above): the path runs to the end. */
    path = (u.field_set & (1 << UF_PATH)) ? url + u.field_data[UF_PATH].off : end;
    free(s->url);
    free(s->host);
    free(s->base_path);
    s->url = lx_strndup(url, len);
    s->host = host;
    s->port = (int)port;
    /* vLLM's base URL ends in /v1 and llmux's paths start with it (and
     * /health, /metrics, /tokenize are at the root): "/v1" is not a prefix. */
    if (end - path >= 3 && memcmp(end - 3, "/v1", 3) == 0)
        end -= 3;
    s->base_path = lx_strndup(path, (size_t)(end - path));
    return 0;
}
