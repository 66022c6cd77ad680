#ifndef CFUSE3_SHIM_H
#define CFUSE3_SHIM_H

// libfuse3's low-level API (Debian's libfuse3-dev, 3.14): the version this code is written for.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdlib.h>

// Bit fields and macros Swift does not import well.
static inline int cfuse3_open_flags(const struct fuse_file_info *fi) { return fi->flags; }
// The kernel keeps what it cached of the file (or directory listing) across opens.
static inline void cfuse3_keep_cache(struct fuse_file_info *fi, int directory) {
    fi->keep_cache = 1;
    if (directory) fi->cache_readdir = 1;
}

// A session with the options given to `-o` (mount options included: they are parsed here).
static inline struct fuse_session *cfuse3_session_new(const char *program, const char *options,
                                                      const struct fuse_lowlevel_ops *ops, void *userdata) {
    char *argv[] = { (char *)program, (char *)"-o", (char *)options, NULL };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    return fuse_session_new(&args, ops, sizeof(*ops), userdata);
}

// The multi-threaded loop, with at most `max_threads` workers.
static inline int cfuse3_loop_mt(struct fuse_session *se, unsigned int max_threads, unsigned int idle_threads) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (!config) return -1;
    fuse_loop_cfg_set_max_threads(config, max_threads);
    fuse_loop_cfg_set_idle_threads(config, idle_threads);
    int result = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    return result;
}

static inline void cfuse3_want(struct fuse_conn_info *conn, unsigned int capability) {
    if (conn->capable & capability) conn->want |= capability;
}
static inline int cfuse3_capable(const struct fuse_conn_info *conn, unsigned int capability) {
    return (conn->capable & capability) != 0;
}
static inline void cfuse3_unwant(struct fuse_conn_info *conn, unsigned int capability) {
    conn->want &= ~capability;
}

#endif
