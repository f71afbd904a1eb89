/*
 * Keeps recgen's admin key off tritonserver's command line.
 *
 * tritonserver takes the key of its restricted APIs only as an argument
 * (--http-restricted-api=<apis>:<header>=<key>), and /proc/<pid>/cmdline is
 * readable by every local user. `recgen serve` therefore passes a placeholder
 * in the argument and the key in the environment (/proc/<pid>/environ is
 * readable by the server's own user only), and preloads this library. Before
 * tritonserver's main() runs, glibc calls the function below with the
 * process's argc/argv/envp: it points every argument holding the placeholder
 * at a copy with the key in its place, so tritonserver parses the key while
 * /proc/<pid>/cmdline, which reads the original argument strings, still shows
 * the placeholder. It then removes the key and itself from the environment,
 * so the Python-backend stubs tritonserver starts inherit neither.
 *
 * It also makes tritonserver honour its umask (recgen starts it with 077) in
 * fchmod(): the Python backend creates each stub's shared-memory region and
 * then sets its mode to 0644 explicitly, which would let every local user read
 * the requests passing through it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

static const char kPlaceholder[] = "@RECGEN_ADMIN_KEY@";
static const char kKeyVariable[] = "RECGEN_ADMIN_KEY";

/* The process's umask, read once while it is still single-threaded (reading it means setting it). */
static mode_t recgen_umask = 0;

int fchmod(int fd, mode_t mode) {
    static int (*real_fchmod)(int, mode_t) = NULL;
    if (real_fchmod == NULL) {
        real_fchmod = (int (*)(int, mode_t))dlsym(RTLD_NEXT, "fchmod");
        if (real_fchmod == NULL) {
            return -1;
        }
    }
    return real_fchmod(fd, mode & ~recgen_umask);
}

static void recgen_substitute_admin_key(int argc, char **argv, char **envp) {
    (void)envp;
    recgen_umask = umask(0);
    umask(recgen_umask);
    const char *key = getenv(kKeyVariable);
    if (key == NULL) {
        return;
    }
    const size_t placeholder_length = sizeof(kPlaceholder) - 1;
    const size_t key_length = strlen(key);
    for (int index = 1; index < argc; ++index) {
        const char *found = strstr(argv[index], kPlaceholder);
        if (found == NULL) {
            continue;
        }
        const size_t prefix_length = (size_t)(found - argv[index]);
        const size_t suffix_length = strlen(found + placeholder_length);
        /* Lives as long as the process, like the argument it replaces. */
        char *replaced = malloc(prefix_length + key_length + suffix_length + 1);
        if (replaced == NULL) {
            fputs("recgen: out of memory while passing the admin key\n", stderr);
            abort();
        }
        memcpy(replaced, argv[index], prefix_length);
        memcpy(replaced + prefix_length, key, key_length);
        memcpy(replaced + prefix_length + key_length, found + placeholder_length, suffix_length + 1);
        argv[index] = replaced;
    }
    unsetenv(kKeyVariable);
    unsetenv("LD_PRELOAD");
}

__attribute__((section(".init_array"), used))
static void (*const recgen_admin_key_init)(int, char **, char **) = recgen_substitute_admin_key;
