/*
 * Whether a guest keeps each process's SSE registers across context switches: two processes
 * (parent and child) each hold their own pattern in xmm7 and xmm8 while yielding the CPU to the
 * other 6,000 times, and count the times they found it changed. In the emulated-SVM harness the
 * guest kernel runs without XSAVE, on FXSAVE (harness/README.md, "Guests without XSAVE"); this
 * checks that it still saves what it must (BENCHMARKS.md, "Tried, not adopted: the guest's XSAVE
 * in the harness"). Exit status 0 when both found their pattern every time.
 *
 *   mkdir -p /tmp/xmm && gcc -O2 -static -o /tmp/xmm/xmm harness/probes/xmm-across-switches.c
 *   harness/run-in-svm.sh --bin /usr/sbin/mkfs.ext4 --env HEARTH_MKFS_EXT4=/usr/sbin/mkfs.ext4 \
 *       --file /tmp/xmm --file "$HEARTH_KERNEL" --file "$HEARTH_ROOTFS" \
 *       --env HEARTH_KERNEL="$HEARTH_KERNEL" --env HEARTH_ROOTFS="$HEARTH_ROOTFS" -- \
 *       "$PWD/target/release/hearth" exec --workspace /tmp/xmm -- /work/xmm
 */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static int changed_across_yields(uint64_t pattern)
{
    int changed = 0;
    for (int i = 0; i < 2000; i++) {
        uint64_t a, b;
        __asm__ volatile("movq %0, %%xmm7\n\tmovq %0, %%xmm8" : : "r"(pattern) : "xmm7", "xmm8");
        for (int j = 0; j < 3; j++)
            sched_yield();
        __asm__ volatile("movq %%xmm7, %0\n\tmovq %%xmm8, %1" : "=r"(a), "=r"(b) : : "xmm7", "xmm8");
        if (a != pattern || b != pattern)
            changed++;
    }
    return changed;
}

int main(void)
{
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 2;
    }
    if (child == 0) {
        int changed = changed_across_yields(0x1111111111111111ULL);
        printf("child: xmm7/xmm8 changed %d of 2000 times\n", changed);
        fflush(stdout);
        _exit(changed ? 1 : 0);
    }
    int changed = changed_across_yields(0x2222222222222222ULL);
    printf("parent: xmm7/xmm8 changed %d of 2000 times\n", changed);
    int status = 0;
    if (waitpid(child, &status, 0) < 0) {
        perror("waitpid");
        return 2;
    }
    return changed || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
}
