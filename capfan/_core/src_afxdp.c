/* AF_XDP capture source. The ring's packet arena IS the UMEM: the kernel (or a zero-copy NIC)
 * writes each packet straight into an arena frame, the producer publishes a descriptor whose
 * `off` is the packet's UMEM address, and every consumer reads the frame in place.
 *
 * Frame life cycle: free -> FILL ring (kernel owns it) -> RX ring -> published (seq, frame) ->
 * free again once the ring's tail has passed its seq. The tail only moves as far as reliable
 * consumers allow (capfan_producer_reclaim), and only as far as needed to keep FILL stocked,
 * so lossy consumers keep as much history as the arena holds. When no frame can be reclaimed
 * the FILL ring runs dry and the kernel drops (XDP_STATISTICS).
 *
 * XDP program: capfan loads its own 5-instruction XSKMAP redirect program, named
 * "capfan_xsk", instead of libxdp's default program/dispatcher, because (a) libxdp 1.3 never
 * detaches its program on xsk_socket__delete, (b) its dispatcher needs bpffs, which
 * `ip netns exec` hides, and costs throughput, (c) "xsk_def_prog" is shared by every libxdp
 * user, so a crash cleanup could not tell capfan's program from someone else's. The program is
 * built from raw instructions at run time: nothing is compiled at build time.
 * libxdp still sets up the UMEM and the socket (XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD).
 *
 * Pins: opening a program or map by id needs CAP_SYS_ADMIN, which the agent's systemd unit does
 * not grant. So the program and its XSKMAP are pinned in bpffs, $CAPFAN_BPF_DIR/<netns
 * inode>-<ifindex>/{prog,xsks_map} (default /sys/fs/bpf/capfan), which needs only file access:
 * a later queue's capture opens the pinned map, and after kill -9 the attached program is
 * recognised by the pinned program's id. Without bpffs there (`ip netns exec` hides it) capfan
 * falls back to opening by id.
 *
 * Owners: all capfan sockets of one interface (one process per queue) share one program.
 * $CAPFAN_RUN_DIR/afxdp/<netns inode>-<ifindex> (default /run/capfan) records the program id
 * and, per queue, the owner pid and its start time. The last owner to close detaches the
 * program; a program whose owners are all dead (kill -9) is removed by the next open or by
 * capfan_afxdp_cleanup. Every change happens under flock($CAPFAN_RUN_DIR/afxdp/lock).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "source_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/bpf.h>
#include <linux/ethtool.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <linux/magic.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#ifndef SO_BUSY_POLL
#define SO_BUSY_POLL 46
#endif
#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif

#define PROG_NAME "capfan_xsk"     /* how capfan recognises its own XDP program */
#define MAP_NAME "capfan_xsks"
#define XDP_HEADROOM 256u          /* XDP_PACKET_HEADROOM: packets start this far into a frame */
#define MAX_OWNERS 1024
#define STARVED_POLL_NS 1000000ll  /* re-try the refill this often while FILL is starved */
#define LINKTYPE_ETHERNET 1u
#define SPIN_NS 20000ull           /* busy-wait this long for more packets before sleeping */
#define SPIN_AFTER_RX_NS 1000000ull /* ... if packets came in the last millisecond */
#define REFILL_EVERY 256u          /* packets between refills inside one batch (power of two) */

enum { MODE_AUTO = 0, MODE_SKB = 1, MODE_NATIVE = 2 };
enum { BIND_AUTO = 0, BIND_COPY = 1, BIND_ZC = 2 };

typedef struct frame_ref {
    uint64_t seq;  /* packet published from this frame */
    uint64_t addr; /* frame base address in the UMEM */
} frame_ref;

typedef struct afxdp {
    capfan_source base;
    capfan_afxdp_opts o;
    char ifname[IF_NAMESIZE];
    int ifindex;
    capfan_producer *p;
    uint8_t *area;
    uint32_t frame_size, nframes, rx_size, snaplen;
    uint32_t fill_size;      /* 2 x rx_size: the kernel must never wait for us to refill */
    uint64_t ndesc;          /* descriptors in the ring */
    int full_drop;           /* ring full policy is drop (else block: back-pressure) */
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fq;
    struct xsk_ring_cons cq, rx;
    int fd;
    int map_fd;
    int in_map;
    uint32_t prog_id;
    uint64_t *free_frames;   /* stack of frames owned by nobody */
    uint32_t nfree;
    frame_ref *fifo;         /* published frames in seq order (circular, nframes entries) */
    uint32_t fifo_first, fifo_len;
    uint64_t last_rx_ns;     /* monotonic time of the last non-empty batch */
} afxdp;

/* ------------------------------------------------------------------ errors */

static const char *PRIV_FIX =
    "AF_XDP needs CAP_NET_RAW (socket), CAP_NET_ADMIN + CAP_BPF (XDP program) and CAP_IPC_LOCK or a "
    "large RLIMIT_MEMLOCK (UMEM): run as root, or grant them, e.g. "
    "`setcap cap_net_raw,cap_net_admin,cap_bpf,cap_ipc_lock+ep` on the capture binary or "
    "AmbientCapabilities= in the systemd unit";

/* Map an errno from a privileged step to capfan's error codes; returns -code. */
static int sys_error(int err, const char *what, const char *ifname) {
    if (err == EPERM || err == EACCES)
        return capfan_set_error(CAPFAN_EPERM, "%s on %s: %s. %s", what, ifname, strerror(err), PRIV_FIX);
    if (err == ENOBUFS || err == ENOMEM)
        return capfan_set_error(CAPFAN_ESYS, "%s on %s: %s (pinning the UMEM needs CAP_IPC_LOCK or a "
                                "RLIMIT_MEMLOCK as large as the ring arena: ulimit -l)", what, ifname, strerror(err));
    return capfan_set_error(CAPFAN_ESYS, "%s on %s: %s", what, ifname, strerror(err));
}

/* ------------------------------------------------------------------ owner records */

typedef struct owner { uint32_t queue; int pid; uint64_t start; } owner;

typedef struct owners {
    uint32_t prog_id;
    int mode;                  /* MODE_SKB / MODE_NATIVE the program was attached in */
    uint32_t n;
    owner o[MAX_OWNERS];
} owners;

/* Where owner records live: $CAPFAN_RUN_DIR, else /run/capfan. */
static const char *run_dir(void) {
    const char *d = getenv("CAPFAN_RUN_DIR");
    return d && *d ? d : "/run/capfan";
}

/* Create $CAPFAN_RUN_DIR/afxdp and take the global AF_XDP lock; returns the lock fd or -code. */
static int lock_take(void) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", run_dir());
    if (mkdir(path, 0755) != 0 && errno != EEXIST) goto fail;
    snprintf(path, sizeof path, "%s/afxdp", run_dir());
    if (mkdir(path, 0755) != 0 && errno != EEXIST) goto fail;
    snprintf(path, sizeof path, "%s/afxdp/lock", run_dir());
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) goto fail;
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) { close(fd); goto fail; }
    }
    return fd;
fail:
    return capfan_set_error(errno == EACCES || errno == EPERM ? CAPFAN_EPERM : CAPFAN_ESYS,
                            "cannot use %s for AF_XDP owner records: %s (set CAPFAN_RUN_DIR to a writable directory)",
                            path, strerror(errno));
}

/* Release the AF_XDP lock. */
static void lock_drop(int fd) {
    if (fd >= 0) close(fd); /* closing releases the flock */
}

/* Inode of this process's network namespace (0 if unknown). */
static unsigned long long netns_ino(void) {
    struct stat st;
    return stat("/proc/self/ns/net", &st) == 0 ? (unsigned long long)st.st_ino : 0;
}

/* Owner record path: interface names and indexes are per network namespace, so key by both. */
static void record_path(int ifindex, char *out, size_t n) {
    snprintf(out, n, "%s/afxdp/%llu-%d", run_dir(), netns_ino(), ifindex);
}

/* Start time of a process in clock ticks (0 if it does not exist): tells a reused pid apart. */
static uint64_t proc_start(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    char *s = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!s) return 0;
    unsigned long long start = 0;
    /* after ")": state is field 3, starttime field 22 */
    if (sscanf(s + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &start) != 1)
        return 0;
    return start;
}

/* Same pid and same start time: the owner process still runs. */
static int owner_alive(const owner *w) {
    return w->pid > 0 && proc_start(w->pid) == w->start;
}

/* Read an owner record (an empty one if there is none). */
static void record_load(const char *path, owners *ow) {
    memset(ow, 0, sizeof *ow);
    FILE *f = fopen(path, "re");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        unsigned q, id;
        int pid, mode;
        unsigned long long start;
        if (sscanf(line, "prog %u %d", &id, &mode) == 2) {
            ow->prog_id = id;
            ow->mode = mode;
        } else if (sscanf(line, "owner %u %d %llu", &q, &pid, &start) == 3 && ow->n < MAX_OWNERS) {
            ow->o[ow->n++] = (owner){q, pid, start};
        }
    }
    fclose(f);
}

/* Write the record atomically (tmp + rename); no owners left = no file. */
static int record_save(const char *path, const owners *ow, const char *ifname) {
    if (ow->n == 0) {
        unlink(path);
        return 0;
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "we");
    if (!f) return capfan_set_error(CAPFAN_ESYS, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "# capfan AF_XDP sockets on %s: XDP program id, mode (1 skb, 2 native); owner queue pid starttime\n", ifname);
    fprintf(f, "prog %u %d\n", ow->prog_id, ow->mode);
    for (uint32_t i = 0; i < ow->n; i++)
        fprintf(f, "owner %u %d %llu\n", ow->o[i].queue, ow->o[i].pid, (unsigned long long)ow->o[i].start);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return capfan_set_error(CAPFAN_ESYS, "cannot write %s: %s", path, strerror(errno));
    }
    return 0;
}

/* Drop owners whose process is gone (kill -9 leaves them behind); returns how many live. */
static uint32_t owners_prune(owners *ow) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < ow->n; i++)
        if (owner_alive(&ow->o[i])) ow->o[k++] = ow->o[i];
    ow->n = k;
    return k;
}

/* Forget records whose owners are all dead (namespaces deleted, captures killed): an attached
 * program without a record counts as stale anyway, so nothing depends on them. */
static void records_gc(void) {
    char dir[PATH_MAX], path[PATH_MAX + 256];
    snprintf(dir, sizeof dir, "%s/afxdp", run_dir());
    DIR *d = opendir(dir);
    owners *ow = malloc(sizeof *ow);
    if (!d || !ow) {
        if (d) closedir(d);
        free(ow);
        return;
    }
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "lock") == 0 || strstr(e->d_name, ".tmp")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        record_load(path, ow);
        if (owners_prune(ow) == 0) unlink(path);
    }
    closedir(d);
    free(ow);
}

/* ------------------------------------------------------------------ the XDP program */

/* The interface's XDP program id and mode (MODE_SKB/MODE_NATIVE), 0 if none. */
static uint32_t attached_prog(int ifindex, int *mode) {
    LIBBPF_OPTS(bpf_xdp_query_opts, q);
    *mode = 0;
    if (bpf_xdp_query(ifindex, 0, &q) != 0) return 0;
    if (q.drv_prog_id) { *mode = MODE_NATIVE; return q.drv_prog_id; }
    if (q.skb_prog_id) { *mode = MODE_SKB; return q.skb_prog_id; }
    if (q.hw_prog_id) { *mode = -1; return q.hw_prog_id; }
    return q.prog_id;
}

/* ------------------------------------------------------------------ pins in bpffs */

#define PIN_PROG "prog"
#define PIN_MAP "xsks_map"

static char pin_why[PATH_MAX + 160]; /* why pins cannot be used here, for error messages */

/* Where capfan pins its programs and maps: $CAPFAN_BPF_DIR, else /sys/fs/bpf/capfan. */
static const char *pin_root(void) {
    const char *d = getenv("CAPFAN_BPF_DIR");
    return d && *d ? d : "/sys/fs/bpf/capfan";
}

/* Is `path` on a bpffs mount? */
static int on_bpffs(const char *path) {
    struct statfs sf;
    return statfs(path, &sf) == 0 && (unsigned long)sf.f_type == (unsigned long)BPF_FS_MAGIC;
}

/* Can pins be used: the pin root is on bpffs (created if its parent is). Else pin_why says why. */
static int pins_usable(void) {
    const char *root = pin_root();
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", root);
    char *slash = strrchr(parent, '/');
    if (slash) *(slash == parent ? slash + 1 : slash) = 0;
    struct stat st;
    if (stat(root, &st) != 0 && errno == ENOENT && on_bpffs(slash ? parent : ".") && mkdir(root, 0700) != 0 &&
        errno != EEXIST) {
        snprintf(pin_why, sizeof pin_why, "cannot create %s: %s (make it writable: systemd ReadWritePaths=)",
                 root, strerror(errno));
        return 0;
    }
    if (!on_bpffs(root)) {
        snprintf(pin_why, sizeof pin_why, "%s is not on a bpffs mount (mount it: mount -t bpf bpf /sys/fs/bpf; "
                 "or set CAPFAN_BPF_DIR to a directory on one)", root);
        return 0;
    }
    pin_why[0] = 0;
    return 1;
}

/* The pin directory of an interface (key as the owner record: netns inode and ifindex). */
static void pin_dir(unsigned long long ns, int ifindex, char *out, size_t n) {
    snprintf(out, n, "%s/%llu-%d", pin_root(), ns, ifindex);
}

/* fd of object `what` pinned in `dir`, or -errno. */
static int pin_get(const char *dir, const char *what) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, what);
    int fd = bpf_obj_get(path);
    return fd < 0 ? -errno : fd;
}

/* Id of the program behind fd (0 if unknown). */
static uint32_t fd_prog_id(int fd) {
    struct bpf_prog_info info;
    uint32_t len = sizeof info;
    memset(&info, 0, sizeof info);
    return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}

/* Id of the program pinned in `dir`, 0 if none. */
static uint32_t pinned_id_at(const char *dir) {
    int fd = pin_get(dir, PIN_PROG);
    if (fd < 0) return 0;
    uint32_t id = fd_prog_id(fd);
    close(fd);
    return id;
}

/* Id of the program pinned for ifindex in this netns, 0 if none. */
static uint32_t pinned_prog_id(int ifindex) {
    char dir[PATH_MAX];
    pin_dir(netns_ino(), ifindex, dir, sizeof dir);
    return pinned_id_at(dir);
}

/* fd of pinned program `id` of ifindex (the pin must still be that program), or -errno. */
static int pinned_prog(int ifindex, uint32_t id) {
    char dir[PATH_MAX];
    pin_dir(netns_ino(), ifindex, dir, sizeof dir);
    int fd = pin_get(dir, PIN_PROG);
    if (fd >= 0 && fd_prog_id(fd) != id) {
        close(fd);
        return -ENOENT;
    }
    return fd;
}

/* fd of the XSKMAP pinned next to program `id` of ifindex, or -errno (-ENOENT: no such pins). */
static int pinned_map(int ifindex, uint32_t id) {
    char dir[PATH_MAX];
    pin_dir(netns_ino(), ifindex, dir, sizeof dir);
    if (pinned_id_at(dir) != id) return -ENOENT;
    int fd = pin_get(dir, PIN_MAP);
    if (fd < 0) return fd;
    struct bpf_map_info mi;
    uint32_t ml = sizeof mi;
    memset(&mi, 0, sizeof mi);
    if (bpf_obj_get_info_by_fd(fd, &mi, &ml) != 0 || mi.type != BPF_MAP_TYPE_XSKMAP) {
        close(fd);
        return -ENOENT;
    }
    return fd;
}

/* Remove the pins in `dir` and the directory itself. */
static void pins_remove_at(const char *dir) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, PIN_PROG);
    unlink(path);
    snprintf(path, sizeof path, "%s/%s", dir, PIN_MAP);
    unlink(path);
    rmdir(dir);
}

/* Remove the pins of ifindex unless they are of the program attached there now (`attached`). */
static void pins_drop_unless(int ifindex, uint32_t attached) {
    char dir[PATH_MAX];
    pin_dir(netns_ino(), ifindex, dir, sizeof dir);
    struct stat st;
    if (stat(dir, &st) != 0) return;
    if (!attached || pinned_id_at(dir) != attached) pins_remove_at(dir);
}

/* Pin a newly attached program and its XSKMAP for ifindex. Best effort: without the pins the
 * capture works, but other queues and crash recovery need CAP_SYS_ADMIN (pin_why says why). */
static void pins_save(int ifindex, int prog_fd, int map_fd) {
    if (!pins_usable()) return;
    char dir[PATH_MAX], path[PATH_MAX + 64];
    pin_dir(netns_ino(), ifindex, dir, sizeof dir);
    pins_remove_at(dir); /* an earlier program's, already known to be stale */
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) goto fail;
    snprintf(path, sizeof path, "%s/%s", dir, PIN_MAP);
    if (bpf_obj_pin(map_fd, path) != 0) goto fail;
    snprintf(path, sizeof path, "%s/%s", dir, PIN_PROG); /* last: a prog pin means both are there */
    if (bpf_obj_pin(prog_fd, path) != 0) goto fail;
    return;
fail:
    snprintf(pin_why, sizeof pin_why, "cannot pin %s: %s", path, strerror(errno));
    pins_remove_at(dir);
}

/* Does network namespace `ino` still exist (a process in it, or an `ip netns` name)? */
static int netns_exists(unsigned long long ino) {
    static const char *const dirs[] = {"/proc", "/run/netns", "/var/run/netns"};
    char path[PATH_MAX];
    struct stat st;
    for (size_t k = 0; k < sizeof dirs / sizeof dirs[0]; k++) {
        DIR *d = opendir(dirs[k]);
        if (!d) continue;
        int found = 0;
        for (struct dirent *e; !found && (e = readdir(d));) {
            if (e->d_name[0] == '.' || (k == 0 && (e->d_name[0] < '0' || e->d_name[0] > '9'))) continue;
            snprintf(path, sizeof path, k == 0 ? "%s/%s/ns/net" : "%s/%s", dirs[k], e->d_name);
            found = stat(path, &st) == 0 && (unsigned long long)st.st_ino == ino;
        }
        closedir(d);
        if (found) return 1;
    }
    return 0;
}

/* Remove stale pins: in this netns those of a program no longer attached to its interface
 * (interface re-created, program removed by hand); of another netns, once it is gone. */
static void pins_gc(void) {
    if (!pins_usable()) return;
    DIR *d = opendir(pin_root());
    if (!d) return;
    unsigned long long mine = netns_ino();
    for (struct dirent *e; (e = readdir(d));) {
        unsigned long long ns;
        int ifindex, mode, end = 0;
        if (sscanf(e->d_name, "%llu-%d%n", &ns, &ifindex, &end) != 2 || e->d_name[end]) continue;
        char dir[PATH_MAX];
        pin_dir(ns, ifindex, dir, sizeof dir);
        uint32_t pinned = ns == mine ? pinned_id_at(dir) : 0;
        if (ns == mine ? !pinned || attached_prog(ifindex, &mode) != pinned : !netns_exists(ns))
            pins_remove_at(dir);
    }
    closedir(d);
}

/* Name of a loaded BPF program (empty if it cannot be read). */
static void prog_name(uint32_t id, char *out, size_t n) {
    struct bpf_prog_info info;
    uint32_t len = sizeof info;
    out[0] = 0;
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) return;
    memset(&info, 0, sizeof info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) snprintf(out, n, "%s", info.name);
    close(fd);
}

/* Is program `id` (attached to ifindex) capfan's redirect program? The one capfan pinned for
 * ifindex is; else by its name; when the name cannot be read (opening a program by id needs
 * CAP_SYS_ADMIN, which the agent's systemd unit does not grant), by the owner record:
 * `recorded` is the program id capfan's record of this interface names (0: none). */
static int is_capfan_prog(int ifindex, uint32_t id, uint32_t recorded) {
    char name[BPF_OBJ_NAME_LEN];
    if (id && pinned_prog_id(ifindex) == id) return 1;
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) return errno == EPERM && recorded == id;
    close(fd);
    prog_name(id, name, sizeof name);
    return strcmp(name, PROG_NAME) == 0;
}

/* XDP_FLAGS_* attach flag of a mode. */
static uint32_t mode_flags(int mode) {
    return mode == MODE_NATIVE ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE;
}

/* Detach program `id` only if it is still the one attached (XDP_FLAGS_REPLACE semantics).
 * Without CAP_SYS_ADMIN the program cannot be opened by id (CAP_BPF + CAP_NET_ADMIN can attach
 * and detach, not open by id): then open it by its pin, and without one detach whatever is
 * attached in that mode if a query (under capfan's lock) still shows `id`. */
static int prog_detach(int ifindex, uint32_t id, int mode) {
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0 && errno == EPERM) {
        fd = pinned_prog(ifindex, id);
        if (fd < 0) errno = EPERM;
    }
    if (fd < 0) {
        if (errno != EPERM) return -errno;
        int now_mode;
        if (attached_prog(ifindex, &now_mode) != id || now_mode != mode) return -ENOENT;
        return bpf_xdp_detach(ifindex, mode_flags(mode), NULL);
    }
    LIBBPF_OPTS(bpf_xdp_attach_opts, a, .old_prog_fd = fd);
    int rc = bpf_xdp_detach(ifindex, mode_flags(mode), &a);
    close(fd);
    return rc;
}

/* The XSKMAP used by capfan program `id` (an fd), or -errno. */
static int prog_map(uint32_t id) {
    struct bpf_prog_info info;
    uint32_t len = sizeof info, map_ids[4] = {0};
    int pfd = bpf_prog_get_fd_by_id(id);
    if (pfd < 0) return -errno;
    memset(&info, 0, sizeof info);
    info.nr_map_ids = 4;
    info.map_ids = (uint64_t)(uintptr_t)map_ids;
    int rc = bpf_obj_get_info_by_fd(pfd, &info, &len);
    close(pfd);
    if (rc != 0) return -errno;
    for (uint32_t i = 0; i < info.nr_map_ids && i < 4; i++) {
        struct bpf_map_info mi;
        uint32_t ml = sizeof mi;
        int mfd = bpf_map_get_fd_by_id(map_ids[i]);
        if (mfd < 0) continue;
        memset(&mi, 0, sizeof mi);
        if (bpf_obj_get_info_by_fd(mfd, &mi, &ml) == 0 && mi.type == BPF_MAP_TYPE_XSKMAP) return mfd;
        close(mfd);
    }
    return -ENOENT;
}

/* Load `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)`: queues without a
 * socket keep going to the network stack. Returns the program fd or -errno. */
static int prog_load(int map_fd) {
    struct bpf_insn insns[] = {
        /* r2 = ctx->rx_queue_index */
        {.code = BPF_LDX | BPF_W | BPF_MEM, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_1,
         .off = (int16_t)offsetof(struct xdp_md, rx_queue_index)},
        /* r1 = &xsks (64-bit immediate: the map fd, resolved by the verifier) */
        {.code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map_fd},
        {0},
        /* r3 = XDP_PASS: action when the queue has no socket */
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = XDP_PASS},
        {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect_map},
        {.code = BPF_JMP | BPF_EXIT},
    };
    int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, PROG_NAME, "Dual BSD/GPL", insns,
                           sizeof insns / sizeof insns[0], NULL);
    return fd < 0 ? -errno : fd;
}

/* Create the XSKMAP and program and attach it in the requested mode (auto: native, else skb).
 * On success *mode is the mode obtained and *map_fd the map. Returns 0 or -code. */
static int prog_attach_new(afxdp *a, uint32_t entries, int *mode, int *map_fd, uint32_t *prog_id) {
    int mfd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, MAP_NAME, 4, 4, entries, NULL);
    if (mfd < 0) return sys_error(errno, "cannot create the XSKMAP", a->ifname);
    int pfd = prog_load(mfd);
    if (pfd < 0) {
        close(mfd);
        return sys_error(-pfd, "cannot load the XDP redirect program", a->ifname);
    }
    int want = a->o.xdp_mode, rc = -EOPNOTSUPP, got = 0;
    for (int m = MODE_NATIVE; m >= MODE_SKB && rc != 0; m--) {
        if (want != MODE_AUTO && want != m) continue;
        rc = bpf_xdp_attach(a->ifindex, pfd, mode_flags(m) | XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
        got = m;
        if (rc != 0 && want == MODE_AUTO && rc != -EOPNOTSUPP && rc != -EINVAL) break;
    }
    if (rc == 0) {
        struct bpf_prog_info info;
        uint32_t len = sizeof info;
        memset(&info, 0, sizeof info);
        bpf_obj_get_info_by_fd(pfd, &info, &len);
        *prog_id = info.id;
        pins_save(a->ifindex, pfd, mfd);
    }
    close(pfd); /* the attachment keeps the program alive */
    if (rc != 0) {
        close(mfd);
        if (rc == -EOPNOTSUPP && want == MODE_NATIVE)
            return capfan_set_error(CAPFAN_ENOTSUP, "the driver of %s has no native XDP support: use xdp_mode=skb or auto", a->ifname);
        if (rc == -EBUSY || rc == -EEXIST)
            return capfan_set_error(CAPFAN_EBUSY, "%s already has an XDP program in another mode; remove it first "
                                    "(ip link set dev %s xdp off)", a->ifname, a->ifname);
        return sys_error(-rc, "cannot attach the XDP program", a->ifname);
    }
    *mode = got;
    *map_fd = mfd;
    return 0;
}

/* Number of receive queues of an interface (ethtool, else sysfs); 0 if unknown. */
static uint32_t rx_queues(const char *ifname) {
    struct ethtool_channels ch = {.cmd = ETHTOOL_GCHANNELS};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    ifr.ifr_data = (void *)&ch;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    uint32_t n = 0;
    if (s >= 0) {
        if (ioctl(s, SIOCETHTOOL, &ifr) == 0) n = ch.rx_count + ch.combined_count;
        close(s);
    }
    if (n) return n;
    char path[128];
    snprintf(path, sizeof path, "/sys/class/net/%s/queues", ifname);
    DIR *d = opendir(path);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strncmp(e->d_name, "rx-", 3) == 0) n++;
    closedir(d);
    return n;
}

/* MTU of an interface, 0 if unknown. */
static int if_mtu(const char *ifname) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), mtu = 0;
    if (s < 0) return 0;
    if (ioctl(s, SIOCGIFMTU, &ifr) == 0) mtu = ifr.ifr_mtu;
    close(s);
    return mtu;
}

/* Driver name of an interface, for error messages. */
static void driver_name(const char *ifname, char *out, size_t n) {
    struct ethtool_drvinfo di = {.cmd = ETHTOOL_GDRVINFO};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    ifr.ifr_data = (void *)&di;
    snprintf(out, n, "?");
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    if (ioctl(s, SIOCETHTOOL, &ifr) == 0) snprintf(out, n, "%s", di.driver);
    close(s);
}

/* Under the lock: remove the capfan program of ifindex if none of its owners is alive.
 * Returns 1 if it removed one, 0 if there was none to remove (or it is in use), -code. */
static int remove_stale(const char *ifname, int ifindex, owners *ow, const char *rec) {
    int mode;
    uint32_t id = attached_prog(ifindex, &mode);
    record_load(rec, ow);
    if (!id || !is_capfan_prog(ifindex, id, ow->prog_id)) {
        if (ow->n) unlink(rec); /* the program is gone (interface re-created, manual unload) */
        pins_drop_unless(ifindex, 0);
        ow->n = 0;
        ow->prog_id = 0;
        return 0;
    }
    /* a record for another program id means those owners belong to a program that is gone */
    if (ow->prog_id != id) ow->n = 0;
    if (owners_prune(ow) > 0) return 0;
    int rc = prog_detach(ifindex, id, mode);
    unlink(rec);
    pins_drop_unless(ifindex, attached_prog(ifindex, &mode));
    ow->prog_id = 0;
    if (rc != 0 && rc != -ENOENT) return sys_error(-rc, "cannot remove the stale capfan XDP program", ifname);
    return 1;
}

/* ------------------------------------------------------------------ frames */

/* Remember that packet `seq` lives in frame `addr` (fifo is in seq order). */
static void fifo_push(afxdp *a, uint64_t seq, uint64_t addr) {
    uint32_t i = a->fifo_first + a->fifo_len;
    if (i >= a->nframes) i -= a->nframes;
    a->fifo[i] = (frame_ref){seq, addr};
    a->fifo_len++;
}

/* Move published frames whose packets are below the ring's tail to the free list. */
static void fifo_release_below(afxdp *a, uint64_t tail) {
    while (a->fifo_len && a->fifo[a->fifo_first].seq < tail) {
        a->free_frames[a->nfree++] = a->fifo[a->fifo_first].addr;
        if (++a->fifo_first == a->nframes) a->fifo_first = 0;
        a->fifo_len--;
    }
}

/* Get `need` free frames, letting the oldest packets go only as far as needed (lossy consumers
 * keep as much history as possible) and only as far as reliable consumers allow. */
static void reclaim_frames(afxdp *a, uint32_t need) {
    fifo_release_below(a, capfan_producer_tail(a->p)); /* the ring may have moved on by itself */
    if (a->nfree >= need || !a->fifo_len) return;
    uint32_t k = need - a->nfree;
    if (k > a->fifo_len) k = a->fifo_len;
    uint32_t i = a->fifo_first + k - 1;
    if (i >= a->nframes) i -= a->nframes;
    /* frames of one packet are contiguous in the fifo, so seq + 1 frees at least k frames */
    fifo_release_below(a, capfan_producer_reclaim(a->p, a->fifo[i].seq + 1));
}

/* Keep the FILL ring stocked. Returns how many frames the kernel now lacks (0 = full). */
static uint32_t refill(afxdp *a) {
    uint32_t room = xsk_prod_nb_free(&a->fq, a->fill_size);
    if (!room) return 0;
    reclaim_frames(a, room);
    uint32_t n = room < a->nfree ? room : a->nfree, idx = 0;
    if (n && xsk_ring_prod__reserve(&a->fq, n, &idx) == n) {
        for (uint32_t i = 0; i < n; i++) *xsk_ring_prod__fill_addr(&a->fq, idx + i) = a->free_frames[--a->nfree];
        xsk_ring_prod__submit(&a->fq, n);
    } else {
        n = 0;
    }
    if (n && xsk_ring_prod__needs_wakeup(&a->fq)) /* zero-copy drivers: kick RX */
        recvfrom(a->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    return room - n;
}

/* Take over what the ring already holds (a previous producer's packets between tail and head,
 * e.g. after a crash): their frames stay busy until reclaimed; the rest start free. */
static int frames_init(afxdp *a) {
    a->free_frames = malloc(sizeof *a->free_frames * a->nframes);
    a->fifo = malloc(sizeof *a->fifo * a->nframes);
    uint8_t *busy = calloc(a->nframes, 1);
    if (!a->free_frames || !a->fifo || !busy) {
        free(busy);
        return capfan_set_error(CAPFAN_ESYS, "out of memory for %u AF_XDP frames", a->nframes);
    }
    capfan_ring *r = capfan_producer_ring(a->p);
    const capfan_desc *d = capfan_ring_desc(r);
    capfan_ring_stats rs;
    capfan_ring_stats_get(r, &rs);
    uint64_t mask = rs.ndesc - 1, head = capfan_producer_head(a->p);
    for (uint64_t s = capfan_producer_tail(a->p); s < head; s++) {
        const capfan_desc *x = &d[s & mask];
        if (x->seq != s) continue;
        uint64_t end = (uint64_t)x->off + (x->caplen ? x->caplen : 1);
        for (uint64_t f = x->off / a->frame_size; f * a->frame_size < end && f < a->nframes; f++) {
            if (busy[f]) continue;
            busy[f] = 1;
            fifo_push(a, s, f * a->frame_size);
        }
    }
    for (uint32_t f = a->nframes; f-- > 0;)
        if (!busy[f]) a->free_frames[a->nfree++] = (uint64_t)f * a->frame_size;
    free(busy);
    return 0;
}

/* ------------------------------------------------------------------ socket setup */

/* Register the ring arena (whole frames only) as the UMEM, with FILL and COMPLETION rings. */
static int umem_create(afxdp *a) {
    struct xsk_umem_config uc = {
        .fill_size = a->fill_size,
        .comp_size = 64, /* capture never transmits; the kernel still wants a ring */
        .frame_size = a->frame_size,
        .frame_headroom = 0,
        .flags = 0,
    };
    int rc = xsk_umem__create(&a->umem, a->area, (uint64_t)a->nframes * a->frame_size, &a->fq, &a->cq, &uc);
    if (rc != 0) {
        a->umem = NULL;
        if (rc == -EFAULT) /* Linux >= 6.5 refuses FOLL_LONGTERM pins of disk-file pages */
            return capfan_set_error(CAPFAN_EINVAL, "cannot register the ring arena as AF_XDP UMEM on %s: the ring "
                                    "file's pages cannot be pinned (it is on a disk filesystem?); put AF_XDP rings "
                                    "on tmpfs or hugetlbfs: /dev/shm (the default) or a hugetlbfs mount via "
                                    "CAPFAN_RING_DIR", a->ifname);
        return sys_error(-rc, "cannot register the ring arena as AF_XDP UMEM", a->ifname);
    }
    return 0;
}

/* Undo xsk_umem__create after a failed bind: libxdp unmaps the FILL/COMPLETION rings only
 * when a socket is deleted, and those mappings would keep the UMEM (pinned pages) alive. */
static void umem_destroy(afxdp *a) {
    struct xdp_mmap_offsets off;
    socklen_t len = sizeof off;
    int fd = xsk_umem__fd(a->umem);
    if (getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len) == 0) {
        munmap((uint8_t *)a->fq.ring - off.fr.desc, off.fr.desc + (size_t)a->fill_size * sizeof(uint64_t));
        munmap((uint8_t *)a->cq.ring - off.cr.desc, off.cr.desc + 64 * sizeof(uint64_t));
    }
    xsk_umem__delete(a->umem);
    a->umem = NULL;
}

/* Bind flags for the requested bind mode. Auto in native mode lets the kernel try zero-copy
 * and fall back to copy (no flag); in skb mode zero-copy cannot work, so ask for copy. */
static uint16_t bind_flags(const afxdp *a, int xdp_mode) {
    if (a->o.bind_mode == BIND_ZC) return XDP_ZEROCOPY;
    if (a->o.bind_mode == BIND_COPY || xdp_mode != MODE_NATIVE) return XDP_COPY;
    return 0;
}

/* UMEM over the ring arena + one XSK bound to (ifname, queue). */
static int socket_open(afxdp *a, int xdp_mode) {
    if (a->o.bind_mode == BIND_ZC && xdp_mode != MODE_NATIVE)
        return capfan_set_error(CAPFAN_ENOTSUP, "zero-copy on %s needs native XDP mode, but the program runs in "
                                "skb mode: use xdp_mode=native (driver permitting) or bind_mode=copy", a->ifname);
    int rc = umem_create(a);
    if (rc) return rc;
    struct xsk_socket_config sc = {
        .rx_size = a->rx_size,
        .tx_size = 0,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD, /* capfan manages the program */
        .xdp_flags = 0,
        .bind_flags = XDP_USE_NEED_WAKEUP | bind_flags(a, xdp_mode),
    };
    rc = xsk_socket__create(&a->xsk, a->ifname, a->o.queue, a->umem, &a->rx, NULL, &sc);
    if (rc == 0) return 0;
    a->xsk = NULL;
    umem_destroy(a);
    if (a->o.bind_mode == BIND_ZC && (rc == -EOPNOTSUPP || rc == -EINVAL || rc == -EPROTONOSUPPORT)) {
        char drv[32];
        driver_name(a->ifname, drv, sizeof drv);
        return capfan_set_error(CAPFAN_ENOTSUP, "driver %s of %s does not support AF_XDP zero-copy (%s): "
                                "use bind_mode=copy or auto", drv, a->ifname, strerror(-rc));
    }
    if (rc == -EBUSY)
        return capfan_set_error(CAPFAN_EBUSY, "queue %u of %s is already bound to another AF_XDP socket "
                                "(another capture running?)", a->o.queue, a->ifname);
    return sys_error(-rc, "cannot bind the AF_XDP socket", a->ifname);
}

/* setsockopt(SOL_SOCKET) of an int; returns 0 or -errno. */
static int set_int_opt(int fd, int opt, int val) {
    return setsockopt(fd, SOL_SOCKET, opt, &val, sizeof val) == 0 ? 0 : -errno;
}

/* SO_PREFER_BUSY_POLL + SO_BUSY_POLL(_BUDGET): recv then drives NAPI itself. */
static int busy_poll_setup(afxdp *a) {
    int rc = set_int_opt(a->fd, SO_PREFER_BUSY_POLL, 1);
    if (!rc) rc = set_int_opt(a->fd, SO_BUSY_POLL, (int)(a->o.busy_poll_us ? a->o.busy_poll_us : 20));
    if (!rc) rc = set_int_opt(a->fd, SO_BUSY_POLL_BUDGET, (int)(a->o.busy_poll_budget ? a->o.busy_poll_budget : 64));
    if (rc == -ENOPROTOOPT)
        return capfan_set_error(CAPFAN_ENOTSUP, "busy polling of AF_XDP sockets needs Linux 5.11 or later");
    return rc ? sys_error(-rc, "cannot enable busy polling", a->ifname) : 0;
}

/* ------------------------------------------------------------------ source ops */

/* AF_XDP delivers whole Ethernet frames. */
static uint32_t afxdp_linktype(capfan_source *s, uint32_t port) {
    (void)s; (void)port;
    return LINKTYPE_ETHERNET;
}

/* Frames are placed by the kernel, so the producer must publish them where they are. */
static int afxdp_prepare(capfan_source *s, capfan_producer *p) {
    afxdp *a = (afxdp *)s;
    if (p != a->p)
        return capfan_set_error(CAPFAN_EINVAL, "this AF_XDP source uses the arena of the ring it was opened with; "
                                "open another source for another ring");
    capfan_producer_set_external(p, (int)a->frame_size); /* ring: arena bytes per packet */
    return capfan_producer_set_linktype(p, a->o.port, LINKTYPE_ETHERNET);
}

/* Wait up to timeout_ns for RX descriptors; keeps refilling while the FILL ring is starved. */
static void wait_rx(afxdp *a, int64_t timeout_ns) {
    uint64_t start = capfan_now_monotonic_ns();
    uint64_t end = timeout_ns < 0 ? UINT64_MAX : start + (uint64_t)timeout_ns;
    /* spin a little before sleeping, but only right after traffic: a sleep/wake-up pair costs
     * more than a batch of packets, while an idle link should cost no CPU */
    uint64_t spin_end = a->last_rx_ns + SPIN_AFTER_RX_NS > start ? start + SPIN_NS : 0;
    for (;;) {
        uint32_t lack = refill(a);
        if (xsk_cons_nb_avail(&a->rx, 1)) return;
        uint64_t now = capfan_now_monotonic_ns();
        if (now >= end) return;
        if (a->o.busy_poll) { /* drive NAPI from here instead of sleeping */
            recvfrom(a->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            continue;
        }
        if (now < spin_end) continue; /* under load the next packets come within microseconds */
        int64_t left = end == UINT64_MAX ? INT64_MAX : (int64_t)(end - now);
        if (lack && left > STARVED_POLL_NS) left = STARVED_POLL_NS; /* consumers may release frames */
        struct timespec ts = {left / 1000000000ll, left % 1000000000ll};
        struct pollfd pfd = {.fd = a->fd, .events = POLLIN};
        ppoll(&pfd, 1, left == INT64_MAX ? NULL : &ts, NULL);
    }
}

/* Block policy: is there a free descriptor (reclaiming the oldest one if reliable consumers
 * allow)? Never waits, so the capture loop stays responsive while consumers hold the ring. */
static int desc_room(afxdp *a) {
    uint64_t head = capfan_producer_head(a->p);
    if (head - capfan_producer_tail(a->p) < a->ndesc) return 1;
    return head - capfan_producer_reclaim(a->p, head - a->ndesc + 1) < a->ndesc;
}

/* Wait (up to timeout_ns, in short sleeps) until reliable consumers free a descriptor. */
static int wait_desc_room(afxdp *a, int64_t timeout_ns) {
    uint64_t end = timeout_ns < 0 ? UINT64_MAX : capfan_now_monotonic_ns() + (uint64_t)timeout_ns;
    while (!desc_room(a)) {
        if (capfan_now_monotonic_ns() >= end) return 0;
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

/* Publish one RX descriptor. Returns 1 published, 0 dropped (drop policy), -1 no room
 * (block policy: the packet stays in the RX ring). */
static int publish_one(afxdp *a, const struct xdp_desc *d, uint64_t ts) {
    uint64_t addr = xsk_umem__add_offset_to_addr(d->addr); /* exact packet start */
    uint64_t frame = addr & ~(uint64_t)(a->frame_size - 1);
    if (!a->full_drop && !desc_room(a)) return -1;
    a->base.st.packets++;
    a->base.st.bytes += d->len;
    if (capfan_producer_reserve_desc(a->p, 0) != 0) { /* drop policy: counted by the ring too */
        a->free_frames[a->nfree++] = frame;
        a->base.st.ring_drops++;
        return 0;
    }
    uint32_t caplen = d->len < a->snaplen ? d->len : a->snaplen;
    if (caplen < d->len) a->base.st.truncated++;
    fifo_push(a, capfan_producer_head(a->p), frame);
    capfan_producer_commit_at(a->p, (uint32_t)addr, ts, caplen, d->len, a->o.port, 0);
    return 1;
}

/* Take up to max packets from the RX ring into the ring, then restock FILL. */
static int afxdp_recv(capfan_source *s, capfan_producer *p, uint32_t max, int64_t timeout_ns) {
    afxdp *a = (afxdp *)s;
    if (p != a->p) return afxdp_prepare(s, p);
    uint32_t idx = 0, n = xsk_ring_cons__peek(&a->rx, max, &idx);
    if (!n) {
        wait_rx(a, timeout_ns);
        n = xsk_ring_cons__peek(&a->rx, max, &idx);
        if (!n) return 0;
    }
    uint64_t ts = capfan_now_realtime_ns(); /* software time the batch was taken */
    a->last_rx_ns = capfan_now_monotonic_ns();
    uint32_t published = 0, done = 0;
    for (; done < n; done++) {
        int r = publish_one(a, xsk_ring_cons__rx_desc(&a->rx, idx + done), ts);
        if (r < 0) break;
        published += (uint32_t)r;
        if ((done & (REFILL_EVERY - 1)) == REFILL_EVERY - 1) refill(a); /* long batch: keep FILL up */
    }
    if (done < n) xsk_ring_cons__cancel(&a->rx, n - done); /* back-pressure: keep them queued */
    xsk_ring_cons__release(&a->rx, done);
    capfan_producer_flush(p);
    a->base.st.published += published;
    refill(a);
    if (done == 0) wait_desc_room(a, timeout_ns); /* do not spin while consumers hold the ring */
    return (int)published;
}

/* XDP_STATISTICS into the source counters. */
static void afxdp_stats(capfan_source *s) {
    afxdp *a = (afxdp *)s;
    struct xdp_statistics xs;
    socklen_t len = sizeof xs;
    memset(&xs, 0, sizeof xs);
    if (a->fd < 0 || getsockopt(a->fd, SOL_XDP, XDP_STATISTICS, &xs, &len) != 0) return;
    /* with the full struct rx_dropped excludes ring-full drops: both are lost packets */
    a->base.st.kernel_drops = xs.rx_dropped + xs.rx_ring_full;
    a->base.st.xdp_rx_invalid = xs.rx_invalid_descs;
    a->base.st.xdp_rx_ring_full = xs.rx_ring_full;
    a->base.st.xdp_fill_empty = xs.rx_fill_ring_empty_descs;
}

/* Leave the owner record; the last owner detaches the program. Runs under the lock. */
static void owner_leave(afxdp *a) {
    char rec[PATH_MAX];
    owners *ow = malloc(sizeof *ow);
    if (!ow) return;
    record_path(a->ifindex, rec, sizeof rec);
    record_load(rec, ow);
    uint32_t k = 0;
    int me = getpid();
    for (uint32_t i = 0; i < ow->n; i++)
        if (!(ow->o[i].pid == me && ow->o[i].queue == a->o.queue)) ow->o[k++] = ow->o[i];
    ow->n = k;
    if (ow->prog_id != a->prog_id) ow->n = 0;
    if (owners_prune(ow) == 0) {
        int mode;
        uint32_t id = attached_prog(a->ifindex, &mode);
        if (id == a->prog_id) prog_detach(a->ifindex, id, mode);
        unlink(rec);
        pins_drop_unless(a->ifindex, attached_prog(a->ifindex, &mode));
    } else {
        record_save(rec, ow, a->ifname);
    }
    free(ow);
}

/* Socket, UMEM (rings unmapped by libxdp), map fd and bookkeeping. */
static void afxdp_free(afxdp *a) {
    if (a->xsk) xsk_socket__delete(a->xsk);
    if (a->umem) xsk_umem__delete(a->umem);
    if (a->map_fd >= 0) close(a->map_fd);
    free(a->free_frames);
    free(a->fifo);
    free(a);
}

/* Leave the XSKMAP and the owner record (the last owner detaches the program), then free. */
static void afxdp_close(capfan_source *s) {
    afxdp *a = (afxdp *)s;
    int lk = lock_take();
    if (a->in_map) bpf_map_delete_elem(a->map_fd, &a->o.queue);
    if (a->prog_id) owner_leave(a);
    lock_drop(lk);
    afxdp_free(a);
}

static const capfan_source_ops AFXDP_OPS = {
    .kind = "afxdp",
    .linktype = afxdp_linktype,
    .prepare = afxdp_prepare,
    .recv = afxdp_recv,
    .stats = afxdp_stats,
    .close = afxdp_close,
};

/* ------------------------------------------------------------------ open */

static int is_pow2(uint32_t x) { return x && !(x & (x - 1)); }

/* Options and arena geometry; fills the derived fields. */
static int check_geometry(afxdp *a) {
    const capfan_afxdp_opts *o = &a->o;
    long page = sysconf(_SC_PAGESIZE);
    if (a->frame_size != 2048 && a->frame_size != 4096)
        return capfan_set_error(CAPFAN_EINVAL, "AF_XDP frame_size must be 2048 or 4096, not %u", o->frame_size);
    if ((long)a->frame_size > page)
        return capfan_set_error(CAPFAN_EINVAL, "AF_XDP frame_size %u exceeds the page size %ld", a->frame_size, page);
    if (!is_pow2(a->rx_size) || a->rx_size < 64 || a->rx_size > 65536)
        return capfan_set_error(CAPFAN_EINVAL, "AF_XDP rx_size must be a power of two from 64 to 65536, not %u", o->rx_size);
    uint64_t len = 0;
    a->area = capfan_producer_arena(a->p, &len);
    if ((uintptr_t)a->area % (uintptr_t)page)
        return capfan_set_error(CAPFAN_EINVAL, "the ring arena is not page aligned, so it cannot be an AF_XDP UMEM");
    if (len > UINT32_MAX)
        return capfan_set_error(CAPFAN_EINVAL, "the ring arena (%llu bytes) exceeds 4 GiB: descriptor offsets are 32-bit",
                                (unsigned long long)len);
    a->nframes = (uint32_t)(len / a->frame_size);
    a->fill_size = 2 * a->rx_size;
    uint64_t need = 2ull * a->fill_size; /* FILL + RX in the kernel's hands, the rest is history */
    if (a->nframes < need)
        return capfan_set_error(CAPFAN_EINVAL, "the ring arena (%llu bytes) holds %u frames of %u bytes; AF_XDP with "
                                "rx_size %u needs at least %llu (FILL ring of 2 x rx_size + RX ring, plus history for "
                                "consumers): create the ring with arena_bytes >= %llu or lower rx_size",
                                (unsigned long long)len, a->nframes, a->frame_size, a->rx_size,
                                (unsigned long long)need, (unsigned long long)need * a->frame_size);
    capfan_ring_stats rs;
    capfan_ring_stats_get(capfan_producer_ring(a->p), &rs);
    a->snaplen = rs.snaplen ? rs.snaplen : CAPFAN_MAX_CAPLEN;
    a->full_drop = rs.full_policy == CAPFAN_FULL_DROP;
    a->ndesc = rs.ndesc;
    if (o->xdp_mode < MODE_AUTO || o->xdp_mode > MODE_NATIVE)
        return capfan_set_error(CAPFAN_EINVAL, "xdp_mode must be 0 auto, 1 skb or 2 native, not %d", o->xdp_mode);
    if (o->bind_mode < BIND_AUTO || o->bind_mode > BIND_ZC)
        return capfan_set_error(CAPFAN_EINVAL, "bind_mode must be 0 auto, 1 copy or 2 zero-copy, not %d", o->bind_mode);
    if (o->port >= CAPFAN_PORTS)
        return capfan_set_error(CAPFAN_EINVAL, "port %u out of range (max %u)", o->port, CAPFAN_PORTS - 1);
    return 0;
}

/* Interface, queue, conflicting programs. Runs under the lock; fills *ow with the live owners. */
static int check_interface(afxdp *a, owners *ow, uint32_t *nq) {
    a->ifindex = (int)if_nametoindex(a->ifname);
    if (!a->ifindex)
        return capfan_set_error(CAPFAN_EINVAL, "no network interface %s in this network namespace", a->ifname);
    *nq = rx_queues(a->ifname);
    if (*nq && a->o.queue >= *nq)
        return capfan_set_error(CAPFAN_EINVAL, "interface %s has %u receive queue%s (0..%u): there is no queue %u",
                                a->ifname, *nq, *nq == 1 ? "" : "s", *nq - 1, a->o.queue);
    /* without multi-buffer AF_XDP a packet must fit one frame after the XDP headroom, or the
     * kernel drops it; 22 = Ethernet header + two VLAN tags */
    int mtu = if_mtu(a->ifname);
    uint32_t room = a->frame_size - XDP_HEADROOM;
    if (mtu > 0 && (uint32_t)mtu + 22 > room)
        return capfan_set_error(CAPFAN_EINVAL, "MTU %d of %s does not fit an AF_XDP frame of %u bytes (%u bytes after "
                                "the XDP headroom): use frame_size=4096 (MTU <= %u) or lower the MTU",
                                mtu, a->ifname, a->frame_size, room, 4096 - XDP_HEADROOM - 22);
    char rec[PATH_MAX];
    record_path(a->ifindex, rec, sizeof rec);
    /* before the garbage collection, which would drop this interface's record of dead owners:
     * without pins that record is what tells a kill -9'd capture's program is capfan's */
    int rc = remove_stale(a->ifname, a->ifindex, ow, rec);
    if (rc < 0) return rc;
    records_gc();
    pins_gc();
    int mode;
    uint32_t id = attached_prog(a->ifindex, &mode);
    if (id && !is_capfan_prog(a->ifindex, id, ow->prog_id)) {
        char name[BPF_OBJ_NAME_LEN];
        prog_name(id, name, sizeof name);
        return capfan_set_error(CAPFAN_EBUSY, "%s already has an XDP program that is not capfan's (id %u, name \"%s\"); "
                                "remove it first (ip link set dev %s xdp off, or xdp-loader unload %s --all)",
                                a->ifname, id, name, a->ifname, a->ifname);
    }
    for (uint32_t i = 0; i < ow->n; i++)
        if (ow->o[i].queue == a->o.queue)
            return capfan_set_error(CAPFAN_EBUSY, "queue %u of %s is already captured by capfan process %d",
                                    a->o.queue, a->ifname, ow->o[i].pid);
    if (id && a->o.xdp_mode != MODE_AUTO && a->o.xdp_mode != mode)
        return capfan_set_error(CAPFAN_EBUSY, "capfan's XDP program on %s runs in %s mode for other queues; "
                                "open this queue with xdp_mode=%s or auto", a->ifname,
                                mode == MODE_NATIVE ? "native" : "skb", mode == MODE_NATIVE ? "native" : "skb");
    return 0;
}

/* Attach our program (or join the one other capfan queues use) and bind the socket. */
static int setup(afxdp *a, owners *ow, uint32_t nq) {
    int mode = 0, rc;
    a->prog_id = attached_prog(a->ifindex, &mode);
    if (a->prog_id) { /* live capfan owners on other queues: share their program and map */
        a->map_fd = pinned_map(a->ifindex, a->prog_id); /* file access is enough */
        if (a->map_fd < 0) a->map_fd = prog_map(a->prog_id);
        if (a->map_fd < 0) {
            a->prog_id = 0; /* not ours to detach on the error path */
            if (a->map_fd == -EPERM) {
                char dir[PATH_MAX];
                pin_dir(netns_ino(), a->ifindex, dir, sizeof dir);
                if (pins_usable())
                    snprintf(pin_why, sizeof pin_why, "%s holds no pins of it (the capture that attached it could "
                             "not pin it, or predates pinning)", dir);
                return capfan_set_error(CAPFAN_EPERM, "queue %u of %s cannot join the XDP program capfan's capture of "
                                        "another queue attached: its XSKMAP is not pinned (%s), and opening it by id "
                                        "needs CAP_SYS_ADMIN (CAP_BPF is not enough); make bpffs available and "
                                        "restart the captures of %s, or grant CAP_SYS_ADMIN",
                                        a->o.queue, a->ifname, pin_why, a->ifname);
            }
            return sys_error(-a->map_fd, "cannot open the XSKMAP of capfan's XDP program", a->ifname);
        }
    } else {
        uint32_t entries = nq > a->o.queue ? nq : a->o.queue + 1;
        if ((rc = prog_attach_new(a, entries < 64 ? 64 : entries, &mode, &a->map_fd, &a->prog_id)) != 0) return rc;
        ow->n = 0;
    }
    ow->prog_id = a->prog_id;
    ow->mode = mode;
    a->base.st.xdp_mode = (uint32_t)mode;
    if ((rc = socket_open(a, mode)) != 0) return rc;
    a->fd = xsk_socket__fd(a->xsk);
    struct xdp_options xo;
    socklen_t len = sizeof xo;
    if (getsockopt(a->fd, SOL_XDP, XDP_OPTIONS, &xo, &len) == 0) a->base.st.zerocopy = (xo.flags & XDP_OPTIONS_ZEROCOPY) != 0;
    if (a->o.busy_poll && (rc = busy_poll_setup(a)) != 0) return rc;
    if ((rc = frames_init(a)) != 0) return rc;
    if ((rc = afxdp_prepare(&a->base, a->p)) != 0) return rc;
    refill(a); /* stock FILL before the program can steer packets to us */
    if (bpf_map_update_elem(a->map_fd, &a->o.queue, &a->fd, 0) != 0)
        return sys_error(errno, "cannot insert the socket into the XSKMAP", a->ifname);
    a->in_map = 1;
    ow->o[ow->n++] = (owner){a->o.queue, getpid(), proc_start(getpid())};
    char rec[PATH_MAX];
    record_path(a->ifindex, rec, sizeof rec);
    return record_save(rec, ow, a->ifname);
}

/* After a failed open: leave the XSKMAP and detach the program if nobody else uses it,
 * keeping the message of the step that failed. Runs under the lock. */
static void unwind(afxdp *a) {
    char msg[512];
    int code = capfan_last_error_code();
    snprintf(msg, sizeof msg, "%s", capfan_last_error());
    if (a->in_map) bpf_map_delete_elem(a->map_fd, &a->o.queue);
    a->in_map = 0;
    if (a->prog_id) owner_leave(a);
    capfan_set_error(code, "%s", msg);
}

/* Everything that touches the interface happens under the AF_XDP lock. */
static int open_locked(afxdp *a) {
    owners *ow = calloc(1, sizeof *ow);
    if (!ow) return capfan_set_error(CAPFAN_ESYS, "out of memory");
    int lk = lock_take();
    if (lk < 0) {
        free(ow);
        return lk;
    }
    uint32_t nq = 0;
    int rc = check_interface(a, ow, &nq);
    if (rc == 0) rc = setup(a, ow, nq);
    if (rc != 0) unwind(a);
    lock_drop(lk);
    free(ow);
    return rc;
}

/* Open an XSK on (ifname, queue) whose UMEM is the producer's arena. */
capfan_source *capfan_afxdp_open(const capfan_afxdp_opts *o, capfan_producer *p) {
    if (!o || !o->ifname || !*o->ifname || !p) {
        capfan_set_error(CAPFAN_EINVAL, "AF_XDP needs an interface name and a ring producer");
        return NULL;
    }
    if (strlen(o->ifname) >= IF_NAMESIZE) {
        capfan_set_error(CAPFAN_EINVAL, "interface name %s is too long", o->ifname);
        return NULL;
    }
    afxdp *a = calloc(1, sizeof *a);
    if (!a) {
        capfan_set_error(CAPFAN_ESYS, "out of memory");
        return NULL;
    }
    a->base.ops = &AFXDP_OPS;
    a->o = *o;
    snprintf(a->ifname, sizeof a->ifname, "%s", o->ifname);
    a->o.ifname = a->ifname;
    a->p = p;
    a->fd = a->map_fd = -1;
    a->frame_size = o->frame_size ? o->frame_size : 2048;
    a->rx_size = o->rx_size ? o->rx_size : 2048;
    int rc = check_geometry(a);
    if (rc == 0) rc = open_locked(a);
    if (rc != 0) {
        afxdp_free(a);
        return NULL;
    }
    return &a->base;
}

/* Remove the capfan XDP program of an interface whose owners are all dead; returns how many. */
int capfan_afxdp_cleanup(const char *ifname) {
    int ifindex = ifname ? (int)if_nametoindex(ifname) : 0;
    if (!ifindex) return capfan_set_error(CAPFAN_EINVAL, "no network interface %s in this network namespace", ifname ? ifname : "(null)");
    owners *ow = malloc(sizeof *ow);
    if (!ow) return capfan_set_error(CAPFAN_ESYS, "out of memory");
    char rec[PATH_MAX];
    record_path(ifindex, rec, sizeof rec);
    int lk = lock_take(), rc = lk;
    if (lk >= 0) {
        rc = remove_stale(ifname, ifindex, ow, rec);
        lock_drop(lk);
    }
    free(ow);
    return rc;
}
