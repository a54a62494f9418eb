/* roadseg_sub: an independent subscriber for roadseg's wire contract, written from
 * decision_bridge/SCHEMA.md alone (not from the Python sources) to show that the document is
 * enough. It decodes every message kind the schema defines: masks (u8-raw, u8-zlib), status,
 * end of stream, drivable space (road/) and, with --latest, the single-frame latest/ form; it
 * reports every lost frame at its seq, a restarted publisher, a dead or frozen publisher and
 * the end of each stream. libzmq and zlib only: the JSON reader below is ours, strict and
 * bounded (section 3: int64 integers, finite doubles, valid UTF-8 and surrogate pairs, at most
 * 32 levels, at most 64 KiB), so no byte sequence can crash it.
 *
 * Build: cc -O2 -Wall -Wextra -o roadseg_sub roadseg_sub.c -lzmq -lz   (or: make)
 * Usage: roadseg_sub ADDR [--stream ID] [--latest ID] [--timeout S] [--first-status-ms MS]
 *                         [--no-heartbeat]
 *
 * One line per event on stdout, line-buffered, fields space-separated (ids %XX-escaped):
 *   mask ID seq=N run=R WxH enc=raw|zlib valid=0|1 dropped_before=N classes_ok=0|1 crc32=X
 *   gap ID lost=N before_seq=N dropped_before=N   (before the mask line that reveals it)
 *   restart ID run=R seq=N                         (new run_id, or seq went back: not a gap)
 *   status ID state=S last_seq=N published=N dropped=N period_ms=X
 *   eos ID final_seq=N reason=R tail=N|unknown missed=N gaps=N
 *   road ID seq=N WxH layer=WxH enc=E valid=0|1 road_px=N road_fraction=X fractions_sum=X
 *        free_ok=0|1|- inside_flat=0|1|- crc32=X
 *   latest ID seq=N run=R WxH enc=E valid=0|1 crc32=X
 *   dead ID silent_ms=N limit_ms=N  /  alive ID silent_ms=N
 *   reject KIND reason...                          (the message is skipped, nothing else changes)
 *   end streams=N masks=N rejected=N               (exit 0: every stream heard has ended)
 *   timeout streams=N masks=N rejected=N           (exit 1)
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
#include <zmq.h>

#define MAX_HEADER 65536 /* section 2 */
#define MAX_DEPTH 32     /* section 3, the header object is level 1 */
#define MAX_SIDE 16384   /* section 3: height, width */
#define MAX_STREAMS 64
#define ALIVE_PERIODS 3 /* section 11: dead after 3 status periods of silence */
#define POSITIVE 4.9406564584124654e-324 /* the smallest double > 0: "> 0" as an inclusive bound */

/* ---------------------------------------------------------------- strict JSON reader */

enum { J_NULL, J_BOOL, J_INT, J_DBL, J_STR, J_ARR, J_OBJ };

typedef struct {
    uint8_t type, b;
    int32_t next, child;  /* next sibling, first member; -1: none */
    uint32_t key, keylen; /* object members: key in the string pool */
    uint32_t off, len;    /* J_STR: bytes in the pool; J_ARR/J_OBJ: member count */
    int64_t i;
    double d;
} jnode;

/* Every value takes at least one input byte and no string grows when unescaped, so input-sized
 * arrays can never overflow: no allocation per message. */
typedef struct {
    char buf[MAX_HEADER + 1]; /* NUL-terminated copy, so strtod stops inside it */
    const char *p, *end;
    jnode nodes[MAX_HEADER + 1];
    int n;
    char pool[MAX_HEADER + 1];
    uint32_t pool_len;
    const char *err;
} json;

static json J;

static int jfail(json *j, const char *why) {
    if (!j->err) j->err = why;
    return -1;
}

/* Strict UTF-8: no overlong forms, no encoded surrogates, nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        else return 0;
        if (n - i - 1 < k) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t m = 2; m <= k; m++)
            if ((s[i + m] & 0xC0) != 0x80) return 0;
        i += k + 1;
    }
    return 1;
}

static void ws(json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int jnew(json *j, int type) {
    if (j->n >= (int)(sizeof j->nodes / sizeof j->nodes[0])) return jfail(j, "too many values");
    jnode *n = &j->nodes[j->n];
    memset(n, 0, sizeof *n);
    n->type = (uint8_t)type;
    n->next = n->child = -1;
    return j->n++;
}

static int hex4(json *j, uint32_t *out) {
    if (j->end - j->p < 4) return 0;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = *j->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static void put_utf8(json *j, uint32_t cp) {
    char *o = j->pool + j->pool_len;
    if (cp < 0x80) { o[0] = (char)cp; j->pool_len += 1; }
    else if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); j->pool_len += 2; }
    else if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); j->pool_len += 3;
    } else {
        o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); j->pool_len += 4;
    }
}

/* At the opening quote. Leaves the unescaped bytes (NUL-terminated, maybe with inner NULs) in the pool. */
static int jstring(json *j, uint32_t *off, uint32_t *len) {
    j->p++;
    *off = j->pool_len;
    for (;;) {
        if (j->p >= j->end) return jfail(j, "unterminated string");
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') break;
        if (c < 0x20) return jfail(j, "control character in a string");
        if (c != '\\') { j->pool[j->pool_len++] = (char)c; continue; }
        if (j->p >= j->end) return jfail(j, "unterminated string");
        c = (unsigned char)*j->p++;
        uint32_t cp, lo;
        switch (c) {
        case '"': case '\\': case '/': j->pool[j->pool_len++] = (char)c; break;
        case 'b': j->pool[j->pool_len++] = '\b'; break;
        case 'f': j->pool[j->pool_len++] = '\f'; break;
        case 'n': j->pool[j->pool_len++] = '\n'; break;
        case 'r': j->pool[j->pool_len++] = '\r'; break;
        case 't': j->pool[j->pool_len++] = '\t'; break;
        case 'u':
            if (!hex4(j, &cp)) return jfail(j, "bad \\u escape");
            if (cp >= 0xDC00 && cp <= 0xDFFF) return jfail(j, "lone low surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* section 3: only a high+low pair is Unicode */
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') return jfail(j, "unpaired high surrogate");
                j->p += 2;
                if (!hex4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF) return jfail(j, "unpaired high surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(j, cp);
            break;
        default: return jfail(j, "bad escape");
        }
    }
    *len = j->pool_len - *off;
    j->pool[j->pool_len++] = 0; /* fits: the two quotes were not copied */
    return 0;
}

static int isdig(const json *j) { return j->p < j->end && *j->p >= '0' && *j->p <= '9'; }

/* JSON's number grammar; integers (no fraction, no exponent) as exact int64, the rest as finite doubles. */
static int jnumber(json *j, jnode *n) {
    const char *start = j->p;
    int neg = 0, integral = 1;
    if (*j->p == '-') { neg = 1; j->p++; }
    if (j->p < j->end && *j->p == '0') j->p++;
    else if (isdig(j)) while (isdig(j)) j->p++;
    else return jfail(j, "bad number");
    if (j->p < j->end && *j->p == '.') {
        integral = 0; j->p++;
        if (!isdig(j)) return jfail(j, "bad number");
        while (isdig(j)) j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        integral = 0; j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (!isdig(j)) return jfail(j, "bad number");
        while (isdig(j)) j->p++;
    }
    if (integral) {
        uint64_t m = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (const char *q = start + neg; q < j->p; q++) {
            uint64_t d = (uint64_t)(*q - '0');
            if (m > (limit - d) / 10) return jfail(j, "integer beyond 64 bits");
            m = m * 10 + d;
        }
        n->type = J_INT;
        n->i = !neg ? (int64_t)m : m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m;
        return 0;
    }
    char *stop;
    double d = strtod(start, &stop); /* the "C" locale: this program never calls setlocale */
    if (stop != j->p) return jfail(j, "bad number");
    if (isinf(d) || isnan(d)) return jfail(j, "number overflows a double");
    n->type = J_DBL;
    n->d = d;
    return 0;
}

static int jliteral(json *j, const char *word) {
    size_t k = strlen(word);
    if ((size_t)(j->end - j->p) < k || memcmp(j->p, word, k) != 0) return jfail(j, "unexpected character");
    j->p += k;
    return 0;
}

static int jvalue(json *j, int depth) {
    ws(j);
    if (j->p >= j->end) return jfail(j, "unexpected end");
    char c = *j->p;
    int id;
    if (c == '{' || c == '[') {
        if (depth > MAX_DEPTH) return jfail(j, "nested deeper than 32");
        int obj = c == '{';
        char close = obj ? '}' : ']';
        if ((id = jnew(j, obj ? J_OBJ : J_ARR)) < 0) return -1;
        j->p++;
        ws(j);
        if (j->p < j->end && *j->p == close) { j->p++; return id; }
        for (int prev = -1;;) {
            uint32_t koff = 0, klen = 0;
            if (obj) {
                ws(j);
                if (j->p >= j->end || *j->p != '"') return jfail(j, "expected a key");
                if (jstring(j, &koff, &klen) < 0) return -1;
                ws(j);
                if (j->p >= j->end || *j->p != ':') return jfail(j, "expected ':'");
                j->p++;
            }
            int m = jvalue(j, depth + 1);
            if (m < 0) return -1;
            j->nodes[m].key = koff;
            j->nodes[m].keylen = klen;
            if (prev < 0) j->nodes[id].child = m;
            else j->nodes[prev].next = m;
            prev = m;
            j->nodes[id].len++;
            ws(j);
            if (j->p < j->end && *j->p == ',') { j->p++; continue; }
            if (j->p < j->end && *j->p == close) { j->p++; return id; }
            return jfail(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    if ((id = jnew(j, J_NULL)) < 0) return -1;
    jnode *n = &j->nodes[id];
    if (c == '"') { n->type = J_STR; return jstring(j, &n->off, &n->len) < 0 ? -1 : id; }
    if (c == 't') { n->type = J_BOOL; n->b = 1; return jliteral(j, "true") < 0 ? -1 : id; }
    if (c == 'f') { n->type = J_BOOL; return jliteral(j, "false") < 0 ? -1 : id; }
    if (c == 'n') return jliteral(j, "null") < 0 ? -1 : id;
    if (c == '-' || (c >= '0' && c <= '9')) return jnumber(j, n) < 0 ? -1 : id;
    return jfail(j, "unexpected character"); /* NaN, Infinity, a BOM, ... */
}

/* The root object's node, or -1 with J.err set. */
static int json_parse(json *j, const void *data, size_t len) {
    j->err = NULL;
    j->n = 0;
    j->pool_len = 0;
    if (len > MAX_HEADER) return jfail(j, "header over 64 KiB");
    if (!utf8_valid(data, len)) return jfail(j, "header is not UTF-8");
    memcpy(j->buf, data, len);
    j->buf[len] = 0;
    j->p = j->buf;
    j->end = j->buf + len;
    int root = jvalue(j, 1);
    if (root < 0) return -1;
    ws(j);
    if (j->p != j->end) return jfail(j, "bytes after the JSON value");
    if (j->nodes[root].type != J_OBJ) return jfail(j, "header is not an object");
    return root;
}

/* Duplicate keys: the last one wins, like the reference decoder (section 3). */
static int jget(const json *j, int obj, const char *key) {
    size_t kl = strlen(key);
    int found = -1;
    for (int c = j->nodes[obj].child; c >= 0; c = j->nodes[c].next)
        if (j->nodes[c].keylen == kl && memcmp(j->pool + j->nodes[c].key, key, kl) == 0) found = c;
    return found;
}

/* ---------------------------------------------------------------- typed fields (section 3 rules) */

typedef struct { const char *s; uint32_t n; } sv;

static int sv_is(sv a, const char *b) { return a.s && a.n == strlen(b) && memcmp(a.s, b, a.n) == 0; }
static int sv_eq(sv a, sv b) { return a.n == b.n && (a.n == 0 || memcmp(a.s, b.s, a.n) == 0); }

enum { REQ = 0, NULLOK = 1, ABSENTOK = 2 };

typedef struct { const json *j; int obj; char err[200]; } fields;

static void bad(fields *f, const char *key, const char *what) {
    if (!f->err[0]) snprintf(f->err, sizeof f->err, "%s %s", key, what);
}

/* The member, or NULL when absent or null (an error unless flags allow it). */
static const jnode *fetch(fields *f, const char *key, int flags) {
    int i = jget(f->j, f->obj, key);
    if (i < 0) { if (!(flags & ABSENTOK)) bad(f, key, "missing"); return NULL; }
    const jnode *n = &f->j->nodes[i];
    if (n->type == J_NULL) { if (!(flags & NULLOK)) bad(f, key, "is null"); return NULL; }
    return n;
}

static int64_t f_int(fields *f, const char *key, int flags, int64_t lo, int64_t hi, int64_t dflt) {
    const jnode *n = fetch(f, key, flags);
    if (!n) return dflt;
    if (n->type != J_INT) { bad(f, key, "is not an integer"); return dflt; }
    if (n->i < lo || n->i > hi) { bad(f, key, "out of range"); return dflt; }
    return n->i;
}

static double num_of(const jnode *n) { return n->type == J_INT ? (double)n->i : n->d; }

static double f_num(fields *f, const char *key, int flags, double lo, double hi, double dflt) {
    const jnode *n = fetch(f, key, flags);
    if (!n) return dflt;
    if (n->type != J_INT && n->type != J_DBL) { bad(f, key, "is not a number"); return dflt; }
    if (!(num_of(n) >= lo && num_of(n) <= hi)) { bad(f, key, "out of range"); return dflt; }
    return num_of(n);
}

static int f_bool(fields *f, const char *key, int flags, int dflt) {
    const jnode *n = fetch(f, key, flags);
    if (!n) return dflt;
    if (n->type != J_BOOL) { bad(f, key, "is not a boolean"); return dflt; }
    return n->b;
}

static sv f_str(fields *f, const char *key, int flags) {
    sv out = {"", 0};
    const jnode *n = fetch(f, key, flags);
    if (!n) return out;
    if (n->type != J_STR) { bad(f, key, "is not a string"); return out; }
    out.s = f->j->pool + n->off;
    out.n = n->len;
    return out;
}

/* Index of the string's value in `allowed` (NULL-terminated), or -1 (an error if present). */
static int f_enum(fields *f, const char *key, int flags, const char *const *allowed) {
    if (jget(f->j, f->obj, key) < 0 && (flags & ABSENTOK)) return -1;
    sv v = f_str(f, key, flags);
    if (f->err[0] || !v.s) return -1;
    for (int k = 0; allowed[k]; k++)
        if (sv_is(v, allowed[k])) return k;
    bad(f, key, "has an unknown value");
    return -1;
}

static const jnode *f_kind(fields *f, const char *key, int flags, int type, const char *what) {
    const jnode *n = fetch(f, key, flags);
    if (n && n->type != type) { bad(f, key, what); return NULL; }
    return n;
}

static const char *const STATES[] = {"connecting", "live", "stalled", "reconnecting", "ended", "failed", NULL};
static const char *const ENCODINGS[] = {"u8-raw", "u8-zlib", NULL};
/* section 4.1: the class table this subscriber was built for */
static const char *const CLASSES[] = {"void", "flat", "construction", "object", "nature", "sky", "human", "vehicle"};
#define N_CLASSES 8
#define FLAT 1

/* schema and version first, so a newer publisher gets the versions we support in its reject line */
static void f_schema(fields *f, const char *schema) {
    sv s = f_str(f, "schema", REQ);
    if (!f->err[0] && !sv_is(s, schema)) bad(f, "schema", "is not the expected one");
    const jnode *v = f_kind(f, "version", REQ, J_INT, "is not an integer");
    if (!f->err[0] && v->i != 1)
        snprintf(f->err, sizeof f->err, "unsupported %s version %lld (supported: 1)", schema, (long long)v->i);
}

typedef struct {
    sv stream_id, run_id;
    int64_t seq, height, width, dropped_before;
    int zlib, valid, nclasses, classes_ok;
} mask_hdr;

static int check_mask(const json *j, int root, mask_hdr *h, char *err, size_t errlen) {
    fields f = {j, root, ""};
    f_schema(&f, "roadseg.mask");
    h->stream_id = f_str(&f, "stream_id", REQ);
    if (!f.err[0] && h->stream_id.n == 0) bad(&f, "stream_id", "is empty");
    h->seq = f_int(&f, "seq", REQ, 0, INT64_MAX, 0);
    f_str(&f, "frame_name", REQ);
    f_int(&f, "capture_mono_ns", REQ, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "capture_wall_ns", REQ, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "publish_mono_ns", REQ, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "publish_wall_ns", REQ, INT64_MIN, INT64_MAX, 0);
    h->height = f_int(&f, "height", REQ, 1, MAX_SIDE, 1);
    h->width = f_int(&f, "width", REQ, 1, MAX_SIDE, 1);
    h->zlib = f_enum(&f, "encoding", REQ, ENCODINGS) == 1;
    f_str(&f, "model_id", REQ);
    const jnode *t = f_kind(&f, "timings", REQ, J_OBJ, "is not an object");
    if (t) {
        fields ft = {j, (int)(t - j->nodes), ""};
        static const char *const T[] = {"queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms"};
        for (int k = 0; k < 4; k++) f_num(&ft, T[k], REQ, -INFINITY, INFINITY, 0);
        if (ft.err[0] && !f.err[0]) snprintf(f.err, sizeof f.err, "timings.%s", ft.err);
    }
    f_int(&f, "batch_size", REQ, 1, INT64_MAX, 1);
    h->valid = f_bool(&f, "valid", REQ, 0);
    f_str(&f, "invalid_reason", NULLOK);
    h->dropped_before = f_int(&f, "dropped_before", REQ, 0, INT64_MAX, 0);
    const jnode *cl = f_kind(&f, "classes", REQ, J_ARR, "is not an array");
    h->nclasses = 0;
    h->classes_ok = 0;
    if (cl) {
        if (cl->len < 1 || cl->len > 256) bad(&f, "classes", "must have 1..256 entries");
        int same = cl->len == N_CLASSES, k = 0;
        for (int c = cl->child; c >= 0; c = j->nodes[c].next, k++) {
            const jnode *e = &j->nodes[c];
            if (e->type != J_STR) { bad(&f, "classes", "has a non-string entry"); break; }
            if (k < N_CLASSES && !(e->len == strlen(CLASSES[k]) && memcmp(j->pool + e->off, CLASSES[k], e->len) == 0))
                same = 0;
        }
        h->nclasses = (int)cl->len;
        h->classes_ok = same;
    }
    const jnode *iou = f_kind(&f, "iou", NULLOK, J_OBJ, "is not an object or null");
    if (iou) {
        fields fi = {j, (int)(iou - j->nodes), ""};
        const jnode *pc = f_kind(&fi, "per_class", REQ, J_ARR, "is not an array");
        if (pc && (int)pc->len != h->nclasses) bad(&fi, "per_class", "is not one entry per class");
        for (int c = pc ? pc->child : -1; c >= 0; c = j->nodes[c].next) {
            const jnode *e = &j->nodes[c];
            if (e->type != J_NULL && !((e->type == J_INT || e->type == J_DBL) && num_of(e) >= 0 && num_of(e) <= 1))
                bad(&fi, "per_class", "has an entry that is not null or a number in 0..1");
        }
        f_num(&fi, "mean", NULLOK, 0, 1, 0);
        if (fi.err[0] && !f.err[0]) snprintf(f.err, sizeof f.err, "iou.%s", fi.err);
    }
    /* "Added in v1 (absent: ...)": optional, with the documented defaults */
    f_bool(&f, "live", ABSENTOK, 0);
    f_num(&f, "max_age_ms", ABSENTOK | NULLOK, -INFINITY, INFINITY, 0);
    f_enum(&f, "stream_state", ABSENTOK, STATES);
    f_int(&f, "reconnects", ABSENTOK, 0, INT64_MAX, 0);
    h->run_id = f_str(&f, "run_id", ABSENTOK);
    f_int(&f, "media_ns", ABSENTOK | NULLOK, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "frame_height", ABSENTOK | NULLOK, 1, INT64_MAX, 0);
    f_int(&f, "frame_width", ABSENTOK | NULLOK, 1, INT64_MAX, 0);
    if (f.err[0]) snprintf(err, errlen, "%s", f.err);
    return !f.err[0];
}

/* ---------------------------------------------------------------- payloads (section 4) */

/* Decodes into *buf (grown as needed) exactly n bytes; NULL or the reason it refuses. */
static const char *decode_payload(const void *data, size_t len, int zlib, size_t n, uint8_t **buf, size_t *cap) {
    if (*cap < n + 1) {
        uint8_t *grown = realloc(*buf, n + 1);
        if (!grown) return "out of memory for the payload";
        *buf = grown;
        *cap = n + 1;
    }
    if (!zlib) {
        if (len != n) return "u8-raw payload is not height*width bytes";
        memcpy(*buf, data, n);
        return NULL;
    }
    if (len > UINT32_MAX) return "u8-zlib payload too large";
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK) return "zlib init failed";
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)len;
    z.next_out = *buf;
    z.avail_out = (uInt)(n + 1); /* +1 so a stream that decodes to more than n is caught, not cut */
    int rc = inflate(&z, Z_FINISH);
    size_t got = z.total_out, left = z.avail_in;
    inflateEnd(&z);
    if (rc == Z_STREAM_END) {
        if (left) return "bytes after the zlib stream";
        return got == n ? NULL : "decoded size is not height*width";
    }
    if (rc == Z_BUF_ERROR) return got > n ? "decoded size is not height*width" : "truncated zlib stream";
    return "corrupt zlib stream";
}

/* ---------------------------------------------------------------- per-stream state */

typedef struct {
    char *id, *run;
    uint32_t idlen, runlen;
    int have_last;    /* last_seq is a baseline for gap detection in this run */
    int64_t last_seq; /* newest mask seq seen, or -1 from a status sent before frame 0 */
    int64_t gaps, missed;
    double period_ms; /* from the newest status; 0 before the first */
    double last_heard;
    int dead, ended, nclasses;
    uint8_t *mask; /* the newest accepted mask, for the road message of the same frame */
    size_t mask_cap;
    int64_t mask_seq, mask_h, mask_w;
} stream_t;

static stream_t streams[MAX_STREAMS];
static int nstreams;
static long long n_masks, n_rejected, n_foreign;
static uint8_t *scratch;
static size_t scratch_cap;
static double first_status_ms = 3000; /* own timeout before any status arrives (section 11) */
static sv only;                       /* --stream */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Ids and run ids are free UTF-8: %XX-escaped so every line stays one line of space-separated
 * fields. Two rotating buffers: a line may print two strings. */
static const char *esc(sv v) {
    static char bufs[2][3 * MAX_HEADER + 1];
    static int which;
    char *o = bufs[which ^= 1], *p = o;
    for (uint32_t k = 0; k < v.n && k < MAX_HEADER; k++) {
        unsigned char c = (unsigned char)v.s[k];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
            c == '-' || c == ':')
            *p++ = (char)c;
        else
            p += sprintf(p, "%%%02X", c);
    }
    *p = 0;
    return o;
}

static void line(const char *kind, sv id, const char *fmt, ...) {
    printf("%s %s", kind, esc(id));
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

static void reject(const char *kind, const char *why) {
    n_rejected++;
    printf("reject %s %s\n", kind, why);
}

static sv sid_of(const stream_t *s) { return (sv){s->id, s->idlen}; }

static stream_t *stream_for(sv id) {
    for (int k = 0; k < nstreams; k++)
        if (sv_eq(sid_of(&streams[k]), id)) return &streams[k];
    if (nstreams == MAX_STREAMS) return NULL;
    stream_t *s = &streams[nstreams];
    memset(s, 0, sizeof *s);
    if (!(s->id = malloc(id.n + 1))) return NULL;
    memcpy(s->id, id.s, id.n);
    s->idlen = id.n;
    s->mask_seq = -1;
    s->last_heard = now_s();
    nstreams++;
    return s;
}

/* Any message of the stream counts for "alive" (sections 5 and 11). */
static void heard(stream_t *s) {
    double now = now_s();
    if (s->dead) line("alive", sid_of(s), " silent_ms=%.0f", (now - s->last_heard) * 1e3);
    s->dead = 0;
    s->last_heard = now;
}

/* A different run_id is a restarted publisher: seq starts again at 0 and that is not a gap
 * (section 6); an ended stream comes back with its new run. */
static int enter_run(stream_t *s, sv run, int64_t seq) {
    if (s->run && sv_eq((sv){s->run, s->runlen}, run)) return 1;
    char *copy = malloc(run.n + 1);
    if (!copy) return 0;
    memcpy(copy, run.s, run.n);
    if (s->run) line("restart", sid_of(s), " run=%s seq=%lld", esc(run), (long long)seq);
    free(s->run);
    s->run = copy;
    s->runlen = run.n;
    s->have_last = s->ended = 0;
    s->mask_seq = -1;
    s->gaps = s->missed = 0;
    return 1;
}

static int topic_is(zmq_msg_t *topic, const char *prefix, sv id) {
    size_t pl = strlen(prefix);
    const char *t = zmq_msg_data(topic);
    return zmq_msg_size(topic) == pl + id.n && memcmp(t, prefix, pl) == 0 && memcmp(t + pl, id.s, id.n) == 0;
}

static int foreign(sv id) {
    if (only.s && !sv_eq(id, only)) { n_foreign++; return 1; } /* a prefix match, not ours (section 1) */
    return 0;
}

/* Header and payload checks shared by the multipart and the single-frame form; the mask is left in scratch. */
static int decode_mask(const char *kind, const void *hdr, size_t hlen, const void *payload, size_t plen, mask_hdr *h) {
    char err[256];
    int root = json_parse(&J, hdr, hlen);
    if (root < 0) { reject(kind, J.err); return 0; }
    if (!check_mask(&J, root, h, err, sizeof err)) { reject(kind, err); return 0; }
    size_t n = (size_t)h->height * (size_t)h->width;
    const char *why = decode_payload(payload, plen, h->zlib, n, &scratch, &scratch_cap);
    if (why) { reject(kind, why); return 0; }
    uint8_t top = 0;
    for (size_t k = 0; k < n; k++)
        if (scratch[k] > top) top = scratch[k];
    if (top >= h->nclasses) { reject(kind, "category id >= len(classes)"); return 0; }
    return 1;
}

static void mask_line(const char *kind, const mask_hdr *h) {
    size_t n = (size_t)h->height * (size_t)h->width;
    line(kind, h->stream_id, " seq=%lld run=%s %lldx%lld enc=%s valid=%d dropped_before=%lld classes_ok=%d crc32=%08lx",
         (long long)h->seq, esc(h->run_id), (long long)h->width, (long long)h->height, h->zlib ? "zlib" : "raw",
         h->valid, (long long)h->dropped_before, h->classes_ok, crc32(0, scratch, (uInt)n));
}

/* ---------------------------------------------------------------- message handlers */

static void on_mask(zmq_msg_t *parts, int n) {
    mask_hdr h;
    if (n != 3) { reject("mask", "not 3 frames"); return; }
    if (!decode_mask("mask", zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), zmq_msg_data(&parts[2]),
                     zmq_msg_size(&parts[2]), &h))
        return;
    if (!topic_is(&parts[0], "mask/", h.stream_id)) { reject("mask", "topic is not mask/ + stream_id"); return; }
    if (foreign(h.stream_id)) return;
    stream_t *s = stream_for(h.stream_id);
    if (!s || !enter_run(s, h.run_id, h.seq)) { reject("mask", "too many streams"); return; }
    if (s->ended) { reject("mask", "mask after the end of its stream"); return; }
    heard(s);
    if (s->have_last && h.seq <= s->last_seq) { /* section 6: the publisher restarted */
        line("restart", h.stream_id, " run=%s seq=%lld", esc(h.run_id), (long long)h.seq);
        s->gaps = s->missed = 0;
    } else if ((s->have_last && h.seq > s->last_seq + 1) || (!s->have_last && h.seq > 0 && h.dropped_before == h.seq)) {
        /* the second case: a run's first message counts its drops from the start (section 3), so
         * dropped_before == seq says frames 0..seq-1 were all lost, however late we joined */
        int64_t lost = s->have_last ? h.seq - s->last_seq - 1 : h.seq;
        s->gaps++;
        s->missed += lost;
        line("gap", h.stream_id, " lost=%lld before_seq=%lld dropped_before=%lld", (long long)lost, (long long)h.seq,
             (long long)h.dropped_before);
    }
    s->have_last = 1;
    s->last_seq = h.seq;
    mask_line("mask", &h);
    n_masks++;
    /* kept for the road message of the same frame: swap buffers rather than copy */
    uint8_t *b = s->mask;
    size_t c = s->mask_cap;
    s->mask = scratch, s->mask_cap = scratch_cap;
    scratch = b, scratch_cap = c;
    s->mask_seq = h.seq, s->mask_h = h.height, s->mask_w = h.width, s->nclasses = h.nclasses;
}

static const char *const KINDS[] = {"status", "eos", NULL};
static const char *const REASONS[] = {"ended", "failed", "stopped", NULL};

static void on_report(zmq_msg_t *parts, int n, int eos) {
    const char *kind = KINDS[eos];
    if (n != 2) { reject(kind, "not 2 frames"); return; }
    int root = json_parse(&J, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]));
    if (root < 0) { reject(kind, J.err); return; }
    fields f = {&J, root, ""};
    f_schema(&f, "roadseg.stream");
    if (f_enum(&f, "kind", REQ, KINDS) != eos && !f.err[0]) bad(&f, "kind", "is not the topic's prefix");
    sv sid = f_str(&f, "stream_id", REQ), run = f_str(&f, "run_id", REQ);
    if (!f.err[0] && sid.n == 0) bad(&f, "stream_id", "is empty");
    int state = f_enum(&f, "state", REQ, STATES);
    int64_t last_seq = f_int(&f, "last_seq", REQ, -1, INT64_MAX, -1);
    int64_t published = f_int(&f, "published", REQ, 0, INT64_MAX, 0);
    int64_t dropped = f_int(&f, "dropped", REQ, 0, INT64_MAX, 0);
    f_num(&f, "fps", NULLOK, POSITIVE, INFINITY, 0);
    f_num(&f, "mask_fps", NULLOK, POSITIVE, INFINITY, 0);
    f_bool(&f, "live", REQ, 0);
    f_num(&f, "max_age_ms", NULLOK, -INFINITY, INFINITY, 0);
    double period = f_num(&f, "period_ms", REQ, POSITIVE, INFINITY, 1);
    f_int(&f, "reconnects", REQ, 0, INT64_MAX, 0);
    f_int(&f, "publish_mono_ns", REQ, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "publish_wall_ns", REQ, INT64_MIN, INT64_MAX, 0);
    int reason = eos ? f_enum(&f, "reason", REQ, REASONS) : -1;
    if (!eos && fetch(&f, "reason", NULLOK) && !f.err[0]) bad(&f, "reason", "is not null in a status");
    if (f.err[0]) { reject(kind, f.err); return; }
    if (!topic_is(&parts[0], eos ? "eos/" : "status/", sid)) { reject(kind, "topic is not kind/ + stream_id"); return; }
    if (foreign(sid)) return;
    stream_t *s = stream_for(sid);
    if (!s || !enter_run(s, run, last_seq)) { reject(kind, "too many streams"); return; }
    if (s->ended) { reject(kind, "message after the end of its stream"); return; }
    if (eos && s->have_last && last_seq < s->last_seq) { reject(kind, "final_seq before a mask received"); return; }
    heard(s);
    s->period_ms = period;
    if (!eos) {
        /* Sent before frame 0 was captured, so every frame's mask (or its gap) reaches us from
         * here: a lost frame 0 is then a gap too, not an unknowable slow-joiner start. */
        if (!s->have_last && last_seq == -1) s->have_last = 1, s->last_seq = -1;
        line("status", sid, " state=%s last_seq=%lld published=%lld dropped=%lld period_ms=%g", STATES[state],
             (long long)last_seq, (long long)published, (long long)dropped, period);
        return;
    }
    char tail[32] = "unknown";
    if (s->have_last) {
        s->missed += last_seq - s->last_seq; /* section 11: the frames after the last mask */
        snprintf(tail, sizeof tail, "%lld", (long long)(last_seq - s->last_seq));
    }
    line("eos", sid, " final_seq=%lld reason=%s tail=%s missed=%lld gaps=%lld", (long long)last_seq, REASONS[reason],
         tail, (long long)s->missed, (long long)s->gaps);
    s->ended = 1;
}

static void on_road(zmq_msg_t *parts, int n) {
    if (n != 4) { reject("road", "not 4 frames"); return; }
    int root = json_parse(&J, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]));
    if (root < 0) { reject("road", J.err); return; }
    fields f = {&J, root, ""};
    f_schema(&f, "roadseg.road");
    sv sid = f_str(&f, "stream_id", REQ), run = f_str(&f, "run_id", REQ);
    if (!f.err[0] && sid.n == 0) bad(&f, "stream_id", "is empty");
    int64_t seq = f_int(&f, "seq", REQ, 0, INT64_MAX, 0);
    f_int(&f, "capture_mono_ns", REQ, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "publish_mono_ns", REQ, INT64_MIN, INT64_MAX, 0);
    f_int(&f, "publish_wall_ns", REQ, INT64_MIN, INT64_MAX, 0);
    int64_t height = f_int(&f, "height", REQ, 1, MAX_SIDE, 1), width = f_int(&f, "width", REQ, 1, MAX_SIDE, 1);
    int64_t lh = f_int(&f, "layer_height", REQ, 1, MAX_SIDE, 1), lw = f_int(&f, "layer_width", REQ, 1, MAX_SIDE, 1);
    int zlib = f_enum(&f, "encoding", REQ, ENCODINGS) == 1;
    int valid = f_bool(&f, "valid", REQ, 0);
    const jnode *cf = f_kind(&f, "category_fractions", REQ, J_ARR, "is not an array");
    double sum = 0;
    for (int c = cf ? cf->child : -1; c >= 0; c = J.nodes[c].next) {
        const jnode *e = &J.nodes[c];
        if ((e->type != J_INT && e->type != J_DBL) || !(num_of(e) >= 0 && num_of(e) <= 1))
            bad(&f, "category_fractions", "has an entry that is not a number in 0..1");
        else sum += num_of(e);
    }
    double road_fraction = f_num(&f, "road_fraction", REQ, 0, 1, 0);
    if (f.err[0]) { reject("road", f.err); return; }
    if (!topic_is(&parts[0], "road/", sid)) { reject("road", "topic is not road/ + stream_id"); return; }
    if (foreign(sid)) return;
    if (zmq_msg_size(&parts[2]) != (size_t)width * 2) { reject("road", "free_rows is not width uint16"); return; }
    const uint8_t *fr = zmq_msg_data(&parts[2]);
    for (int64_t x = 0; x < width; x++)
        if (fr[2 * x] + 256 * fr[2 * x + 1] > height) { reject("road", "free_rows beyond the frame height"); return; }
    size_t npx = (size_t)lh * (size_t)lw;
    const char *why = decode_payload(zmq_msg_data(&parts[3]), zmq_msg_size(&parts[3]), zlib, npx, &scratch, &scratch_cap);
    if (why) { reject("road", why); return; }
    size_t road_px = 0;
    for (size_t k = 0; k < npx; k++) {
        if (scratch[k] > 1) { reject("road", "road_layer value not 0 or 1"); return; }
        road_px += scratch[k];
    }
    stream_t *s = stream_for(sid);
    if (!s || !enter_run(s, run, seq)) { reject("road", "too many streams"); return; }
    if (s->ended) { reject("road", "message after the end of its stream"); return; }
    int same = s->mask_seq == seq && s->mask_h == lh && s->mask_w == lw; /* the mask of this frame */
    if (same && (int)cf->len != s->nclasses) { reject("road", "category_fractions is not one per class"); return; }
    heard(s);
    char inside[2] = "-", free_ok[2] = "-";
    if (same) {
        inside[0] = '1'; /* section 14: road lies inside flat */
        for (size_t k = 0; k < npx; k++)
            if (scratch[k] && s->mask[k] != FLAT) { inside[0] = '0'; break; }
    }
    if (lh == height && lw == width) { /* full-size layer: recompute the free-space boundary */
        free_ok[0] = '1';
        for (int64_t x = 0; x < width && free_ok[0] == '1'; x++) {
            int64_t r = height;
            while (r > 0 && scratch[(size_t)(r - 1) * (size_t)lw + (size_t)x]) r--;
            if (fr[2 * x] + 256 * fr[2 * x + 1] != r) free_ok[0] = '0';
        }
    }
    line("road", sid, " seq=%lld %lldx%lld layer=%lldx%lld enc=%s valid=%d road_px=%zu road_fraction=%.4f "
         "fractions_sum=%.4f free_ok=%s inside_flat=%s crc32=%08lx",
         (long long)seq, (long long)width, (long long)height, (long long)lw, (long long)lh, zlib ? "zlib" : "raw", valid,
         road_px, road_fraction, sum, free_ok, inside, crc32(0, scratch, (uInt)npx));
}

/* Section 12: "latest/" + stream_id + 0x00 + uint32 BE header length + header + payload. Stateless:
 * it comes on its own socket, so its order against the main socket's eos is not defined. */
static void on_latest(zmq_msg_t *m) {
    const char *d = zmq_msg_data(m);
    size_t len = zmq_msg_size(m);
    if (len < 7 || memcmp(d, "latest/", 7) != 0) { reject("latest", "topic is not latest/"); return; }
    const char *nul = memchr(d + 7, 0, len - 7);
    if (!nul) { reject("latest", "no 0x00 after the stream id"); return; }
    sv tsid = {d + 7, (uint32_t)(nul - d - 7)};
    size_t rest = len - (size_t)(nul + 1 - d);
    if (rest < 4) { reject("latest", "no header length"); return; }
    const uint8_t *b = (const uint8_t *)nul + 1;
    size_t hl = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];
    if (hl > rest - 4) { reject("latest", "header length beyond the message"); return; }
    mask_hdr h;
    if (!decode_mask("latest", b + 4, hl, b + 4 + hl, rest - 4 - hl, &h)) return;
    if (!sv_eq(h.stream_id, tsid)) { reject("latest", "topic is not latest/ + stream_id"); return; }
    if (foreign(h.stream_id)) return;
    mask_line("latest", &h);
}

/* ---------------------------------------------------------------- socket loop */

/* One whole multipart message: the first `max` frames kept, the rest only counted. 0: none waiting. */
static int recv_parts(void *sock, zmq_msg_t *parts, int max, int *count) {
    int n = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) { /* EAGAIN; multipart arrives whole */
            zmq_msg_close(&m);
            if (n == 0) return 0;
            break;
        }
        int more = zmq_msg_more(&m);
        if (n < max) {
            zmq_msg_init(&parts[n]);
            zmq_msg_move(&parts[n], &m);
        }
        zmq_msg_close(&m);
        n++;
        if (!more) break;
    }
    *count = n;
    return 1;
}

static void dispatch(zmq_msg_t *parts, int n) {
    const char *t = zmq_msg_data(&parts[0]);
    size_t tl = zmq_msg_size(&parts[0]);
#define IS(p) (tl >= strlen(p) && memcmp(t, p, strlen(p)) == 0)
    if (IS("mask/")) on_mask(parts, n);
    else if (IS("status/")) on_report(parts, n, 0);
    else if (IS("eos/")) on_report(parts, n, 1);
    else if (IS("road/")) on_road(parts, n);
    else reject("other", "unknown topic");
#undef IS
}

static void *open_sub(void *ctx, const char *addr, int heartbeat, int conflate) {
    void *s = zmq_socket(ctx, ZMQ_SUB);
    int zero = 0, one = 1, ivl = 1000, tmo = 3000;
    /* the largest legal frame: a 16384x16384 mask, zlib's worst case, plus a header and topic */
    int64_t max_frame = (int64_t)compressBound((uLong)MAX_SIDE * MAX_SIDE) + 2 * MAX_HEADER + 64;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero); /* section 1: shutdown never hangs */
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max_frame, sizeof max_frame);
    if (heartbeat) { /* section 1: notice a vanished publisher host and re-dial */
        zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
        zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &tmo, sizeof tmo);
    }
    if (conflate) zmq_setsockopt(s, ZMQ_CONFLATE, &one, sizeof one);
    if (zmq_connect(s, addr) != 0) {
        fprintf(stderr, "roadseg_sub: cannot connect to %s: %s\n", addr, zmq_strerror(zmq_errno()));
        exit(2);
    }
    return s;
}

static void subscribe(void *s, const char *prefix, const char *id) {
    char topic[512];
    int k = snprintf(topic, sizeof topic, "%s%s", prefix, id ? id : "");
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, topic, (size_t)k);
}

static void usage(void) {
    fprintf(stderr, "usage: roadseg_sub ADDR [--stream ID] [--latest ID] [--timeout S] [--first-status-ms MS] "
                    "[--no-heartbeat]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *addr = NULL, *stream_arg = NULL, *latest = NULL;
    double timeout_s = 60;
    int heartbeat = 1;
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k];
        if (!strcmp(a, "--stream") && k + 1 < argc) stream_arg = argv[++k];
        else if (!strcmp(a, "--latest") && k + 1 < argc) latest = argv[++k];
        else if (!strcmp(a, "--timeout") && k + 1 < argc) timeout_s = atof(argv[++k]);
        else if (!strcmp(a, "--first-status-ms") && k + 1 < argc) first_status_ms = atof(argv[++k]);
        else if (!strcmp(a, "--no-heartbeat")) heartbeat = 0; /* lossless consumers (section 1) */
        else if (a[0] != '-' && !addr) addr = a;
        else usage();
    }
    if (!addr || (stream_arg && strlen(stream_arg) > 256) || (latest && strlen(latest) > 256)) usage();
    if (stream_arg) only = (sv){stream_arg, (uint32_t)strlen(stream_arg)};
    setvbuf(stdout, NULL, _IOLBF, 0); /* a reader sees each line when it happens */

    void *ctx = zmq_ctx_new();
    void *sub = open_sub(ctx, addr, heartbeat, 0);
    static const char *const PREFIXES[] = {"mask/", "status/", "eos/", "road/"};
    for (int k = 0; k < 4; k++) subscribe(sub, PREFIXES[k], stream_arg);
    /* CONFLATE keeps one message per socket, so the single-frame form gets a socket of its own (section 12) */
    void *lsock = NULL;
    if (latest) {
        lsock = open_sub(ctx, addr, heartbeat, 1);
        subscribe(lsock, "latest/", latest);
    }

    double deadline = now_s() + timeout_s;
    int status = 1;
    for (;;) {
        zmq_pollitem_t items[2] = {{sub, 0, ZMQ_POLLIN, 0}, {lsock, 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, lsock ? 2 : 1, 50);
        zmq_msg_t parts[4];
        int n;
        for (int k = 0; k < 256 && recv_parts(sub, parts, 4, &n); k++) { /* bounded, so health still runs */
            dispatch(parts, n);
            for (int m = 0; m < n && m < 4; m++) zmq_msg_close(&parts[m]);
        }
        for (int k = 0; lsock && k < 256 && recv_parts(lsock, parts, 1, &n); k++) {
            if (n != 1) reject("latest", "not 1 frame");
            else on_latest(&parts[0]);
            zmq_msg_close(&parts[0]);
        }
        double now = now_s();
        int ended = 0;
        for (int k = 0; k < nstreams; k++) {
            stream_t *s = &streams[k];
            ended += s->ended;
            double limit = s->period_ms > 0 ? ALIVE_PERIODS * s->period_ms : first_status_ms;
            double silent = (now - s->last_heard) * 1e3;
            if (!s->ended && !s->dead && silent > limit) {
                s->dead = 1;
                line("dead", sid_of(s), " silent_ms=%.0f limit_ms=%.0f", silent, limit);
            }
        }
        if (nstreams > 0 && ended == nstreams) { status = 0; break; }
        if (now > deadline) break;
    }
    printf("%s streams=%d masks=%lld rejected=%lld\n", status == 0 ? "end" : "timeout", nstreams, n_masks, n_rejected);
    zmq_close(sub);
    if (lsock) zmq_close(lsock);
    zmq_ctx_term(ctx);
    return status;
}
