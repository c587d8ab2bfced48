/*
 * conf_file.c - rewriting the JSON config file for run-time changes (the
 * admin API): one "models" entry set or removed, the rest of the file kept,
 * the file replaced atomically. See conf.h.
 */
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "../core/log.h"
#include "../core/lx.h"

json_t *lx_conf_file_models(const char *path)
{
    json_t *root, *models;

    if (!path)
        return NULL;
    root = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
    models = json_is_object(root) ? json_object_get(root, "models") : NULL;
    models = json_is_object(models) ? json_incref(models) : NULL;
    json_decref(root);
    return models;
}

/*
 * Replaces <path> (absolute, no symlink) by <len> bytes of <text>: a
 * temporary file in the same directory (mode and, when allowed, owner of the
 * original), fsync, rename over <path>, fsync of the directory. Returns 0 or
 * -errno with <err> filled; on error <path> is untouched.
 */
static int file_replace(const char *path, const char *text, size_t len, const struct stat *orig,
                        char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash && slash != path ? (size_t)(slash - path) : 1;
    char *dir = lx_strndup(path, dirlen);
    char tmp[PATH_MAX + 64];
    size_t off = 0;
    int fd, dfd, rc = 0;

    snprintf(tmp, sizeof(tmp), "%s/.%s.llmux-XXXXXX", dirlen == 1 && *dir == '/' ? "" : dir,
             slash ? slash + 1 : path);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create a temporary file in %.200s: %s", dir, strerror(errno));
        goto out_dir;
    }
    /* Keep the file's mode (it may hold secrets: 0600) and owner. */
    (void)fchmod(fd, orig->st_mode & 07777);
    if ((orig->st_uid != geteuid() || orig->st_gid != getegid()) &&
        fchown(fd, orig->st_uid, orig->st_gid) < 0)
        lx_debug("config file: cannot keep the owner of %s: %s", path, strerror(errno));
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            snprintf(err, errlen, "cannot write %.200s: %s", tmp, strerror(errno));
            goto out_unlink;
        }
        off += (size_t)n;
    }
    if (fsync(fd) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot fsync %.200s: %s", tmp, strerror(errno));
        goto out_unlink;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = -errno;
        snprintf(err, errlen, "cannot write %.200s: %s", tmp, strerror(errno));
        goto out_unlink;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot rename a temporary file over %.200s: %s", path,
                 strerror(errno));
        goto out_unlink;
    }
    /* The rename is done: the file is changed. A failed directory fsync only
     * weakens durability across a power loss, so it is logged, not failed. */
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        lx_warn("config file: cannot fsync directory %s: %s", dir, strerror(errno));
    if (dfd >= 0)
        close(dfd);
    goto out_dir;

out_unlink:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
out_dir:
    free(dir);
    return rc;
}

int lx_conf_file_set_model(const char *path, const char *model, json_t *entry, char *err,
                           size_t errlen)
{
    char real[PATH_MAX];
    struct stat sb;
    json_error_t je;
    json_t *root = NULL, *models;
    char *text = NULL;
    size_t len;
    int rc = LX_EINVAL;

    if (!realpath(path, real) || stat(real, &sb) < 0) {
        rc = -errno;
        snprintf(err, errlen, "config file %.200s: %s", path, strerror(errno));
        return rc;
    }
    root = json_load_file(real, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "config file %.200s:%d:%d: %.150s", real, je.line, je.column,
                 je.text);
        return LX_EINVAL;
    }
    models = json_object_get(root, "models");
    if (!json_is_object(root) || (models && !json_is_object(models))) {
        snprintf(err, errlen, "config file %.200s: %s is not a JSON object", real,
                 json_is_object(root) ? "\"models\"" : "the file");
        goto out;
    }
    if (!models) {
        models = json_object();
        json_object_set_new(root, "models", models);
    }
    if (!entry) {
        json_object_del(models, model); /* absent (e.g. a VLLM_NODES pool): nothing to do */
    } else if (json_object_set(models, model, entry) < 0) {
        snprintf(err, errlen, "config file %.200s: cannot store model \"%.100s\"", real, model);
        goto out;
    }
    text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    if (!text) {
        snprintf(err, errlen, "config file %.200s: cannot serialise it", real);
        goto out;
    }
    len = strlen(text);
    text = lx_realloc(text, len + 2);
    text[len++] = '\n';
    text[len] = '\0';
    rc = file_replace(real, text, len, &sb, err, errlen);
out:
    free(text);
    json_decref(root);
    return rc;
}

