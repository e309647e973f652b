/*
 * ds01 CUDA notice: tells a user whose login shell hides the GPUs why a CUDA program finds none.
 *
 * Loaded by the dynamic linker as an rtld audit module (LD_AUDIT, set by /etc/profile.d/ds01-gpu-deterrent.sh
 * only for logins whose GPUs are hidden). It interposes no function: the linker calls la_objopen for each
 * object a program loads, and when the CUDA driver library (libcuda.so*) is one of them, two lines go to
 * stderr, once per process. It returns 0 from la_objopen (no symbol binding is audited), so it cannot change
 * what a program does: exempt users and grant holders never get it, non-CUDA programs never load libcuda,
 * and a CUDA program runs exactly as it would have, only after being told. Set DS01_CUDA_NOTICE=0 to silence it.
 *
 * Built by the ds01_gpu_access role: cc -shared -fPIC -O2 -o libds01-cuda-notice.so ds01-cuda-notice.c
 */
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int told;

static const char notice[] =
    "ds01: this program uses CUDA, but on this server GPUs are for containers: your login shell hides them\n"
    "ds01: (CUDA_VISIBLE_DEVICES is empty), so CUDA finds no GPU. Run it in a container instead:\n"
    "ds01:   ds01 container deploy NAME --gpus 1    then    docker exec -it NAME bash\n"
    "ds01: (`ds01 limits` shows your GPU quota; an admin can grant bare-metal use with `ds01 access grant`.)\n";

unsigned int la_version(unsigned int version) {
    return version < LAV_CURRENT ? version : LAV_CURRENT;
}

static int is_cuda_driver(const char *path) {
    const char *base;
    if (path == NULL || path[0] == '\0')
        return 0;
    base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, "libcuda.so", 10) == 0;
}

static int hidden(void) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    const char *quiet = getenv("DS01_CUDA_NOTICE");
    if (quiet != NULL && strcmp(quiet, "0") == 0)
        return 0;
    return visible != NULL && visible[0] == '\0';
}

unsigned int la_objopen(struct link_map *map, Lmid_t lmid, uintptr_t *cookie) {
    (void)lmid;
    (void)cookie;
    if (!told && is_cuda_driver(map->l_name) && hidden()) {
        ssize_t n;
        told = 1;
        n = write(STDERR_FILENO, notice, sizeof(notice) - 1);
        (void)n;
    }
    return 0;
}
