#!/bin/busybox sh
# bufscope VM test bed: the guest's /init. Mounts what the probes need, loads the modules listed
# in /modules/order, runs the scenario named on the kernel command line, copies /results to the
# results disk as a tar archive, and powers off. Every line the host acts on starts with BUFSCOPE-.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /results
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
for module in $(cat /modules/order); do
    insmod "/modules/$module.ko" || echo "BUFSCOPE-FAIL insmod $module"
done
scenario=$(sed -n 's/.*bufscope\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
# The clock source: every probe timestamp reads it (TCG's TSC may be judged unstable, and the
# emulated HPET then costs each reading far more than real hardware's TSC would).
clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
echo "BUFSCOPE-START scenario=$scenario kernel=$(uname -r) cpus=$(nproc) clocksource=$clocksource"
sh -e "/scenarios/$scenario.sh" 2>&1 | tee /results/log.txt
rc=$(cat /tmp/scenario.rc 2>/dev/null || echo 1)
# The results disk is the first virtio disk; its driver may still be probing.
for _ in $(seq 1 50); do [ -b /dev/vda ] && break; sleep 0.2; done
if [ -b /dev/vda ]; then
    # poweroff -f does not sync: flush the archive to the disk first.
    tar -cf /dev/vda -C /results . && sync && echo "BUFSCOPE-RESULTS-SAVED"
else
    echo "BUFSCOPE-FAIL no results disk (/dev/vda): $(cat /proc/partitions | tr '\n' ' ')"
fi
echo "BUFSCOPE-DONE rc=$rc"
poweroff -f
