/*
 * kvm-hold: keeps one idle KVM VM open for the life of the emulated-SVM outer machine.
 *
 * Why (harness/README.md, "Frozen outer machines"): KVM enables the kernel's
 * preempt_notifier_key when the first VM is created and disables it when the last one goes.
 * Each switch rewrites a jump-label site in __schedule with the int3-based text_poke_bp. Under
 * QEMU's TCG the other vCPU has been caught executing the int3 of a finished patch over and
 * over (a stale translation; the kernel's int3 handler sees the original bytes back and
 * returns to them) while holding its runqueue lock, and the machine froze. With this VM open
 * the key never drops to zero, so guests starting and stopping rewrite no kernel code. The
 * vCPU (with an in-kernel local APIC that stays software-disabled) also keeps KVM's
 * apic_sw_disabled key above zero, for the same reason.
 *
 * Usage: kvm-hold. Sets the VM up, forks a child that holds it (sleeping), and exits 0 once the
 * VM exists; prints the reason and exits 1 if it cannot.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int fail(const char *what)
{
    fprintf(stderr, "kvm-hold: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return fail("open /dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        return fail("KVM_CREATE_VM");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
        return fail("KVM_CREATE_IRQCHIP");
    if (ioctl(vm, KVM_CREATE_VCPU, 0) < 0)
        return fail("KVM_CREATE_VCPU");
    pid_t child = fork();
    if (child < 0)
        return fail("fork");
    if (child == 0) {
        /* The child holds the descriptors (and so the VM) until the machine powers off. */
        setsid();
        for (;;)
            pause();
    }
    return 0;
}
