#!/bin/sh
# Real kernel USB devices for a simulated Home Radio Head, made of configfs gadgets on the
# virtual UDCs of dummy_hcd. Runs inside a test guest (busybox sh, as root).
#
# Each gadget sits on a UDC of its own, so each one is a separate device on a root hub of its
# own, as separate dongles plugged into a gateway would be:
#
#   name     function                         id         gadget side
#   acm      CDC-ACM serial port              1209:000a  /dev/ttyGS0
#   storage  mass storage backed by a file    1209:000b  /tmp/hrh-storage.img
#   hid      vendor-defined HID, 8-byte       1209:000c  /dev/hidg0
#            input and output reports
#   sink     bulk source and sink (only with  1209:000d  in the kernel: IN endpoint 1
#            `setup MIB sink`)                           fills every URB, OUT endpoint 2
#                                                        swallows everything
#
# The sink measures a USB/IP server alone (tests/src/urbbench.rs): the kernel answers every
# URB at once, with no program of the HRH's in the loop.
#
# The ids are pid.codes test ids; the simulated dongles of hrh-exporter use 1209:0001-0003.
# There is no audio (isochronous) gadget: dummy_hcd offers no isochronous endpoints at all
# (their entries are commented out of its endpoint table in Linux 6.1, and its host side fails
# every iso URB), so binding usb_f_uac2 to it fails with "afunc_bind ... Error!" / -ENODEV.
# Isochronous devices come from QEMU's emulated USB devices instead (see tests/src/hrh.rs).
#
# Usage:
#   hrh-gadgets.sh setup [STORAGE_MIB] [sink]
#                                       load the modules, create the gadgets, plug them in
#                                       (the backing file is STORAGE_MIB MiB, default 16;
#                                       `sink` adds the sink gadget)
#   hrh-gadgets.sh up NAME              plug a gadget in (bind it to its UDC)
#   hrh-gadgets.sh down NAME            unplug it (unbind it from its UDC)
#   hrh-gadgets.sh list                 describe the gadgets that exist
#   hrh-gadgets.sh hcd NAME             print the sysfs directory of the gadget's host side,
#                                       whose "urbs" file lists the URBs pending on it
#
# Every command that changes something ends with one line per gadget concerned:
#   HRH-GADGET name=acm busid=3-1 id=1209:000a udc=dummy_udc.0 state=up
# busid is the device's USB/IP bus id on this machine ("-" while unplugged).
set -u

CONFIGFS=/sys/kernel/config
GADGETS=$CONFIGFS/usb_gadget
STORAGE_IMG=/tmp/hrh-storage.img
# The gadgets that exist: the three of every HRH, and the sink where setup was asked for it.
ALL="acm storage hid"
[ -d "$GADGETS/hrh-sink" ] && ALL="$ALL sink"
# UDCs: one per gadget, plus nothing else (the guest has no other UDC).
NUM_UDC=3

die() {
    echo "hrh-gadgets: error: $*" >&2
    exit 1
}

# The UDC index of each gadget; dummy_udc.N is wired to the root hub of dummy_hcd.N.
index_of() {
    case "$1" in
    acm) echo 0 ;;
    storage) echo 1 ;;
    hid) echo 2 ;;
    sink) echo 3 ;;
    *) die "unknown gadget '$1' (one of: $ALL)" ;;
    esac
}

product_id_of() {
    case "$1" in
    acm) echo 0x000a ;;
    storage) echo 0x000b ;;
    hid) echo 0x000c ;;
    sink) echo 0x000d ;;
    esac
}

# poll SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds or SECONDS pass.
poll() {
    _left=$(($1 * 10))
    shift
    until "$@"; do
        _left=$((_left - 1))
        [ "$_left" -gt 0 ] || return 1
        sleep 0.1
    done
}

# The sysfs directory of the device plugged into the root hub of dummy_hcd.N, if any.
device_dir() {
    for _d in /sys/devices/platform/dummy_hcd."$(index_of "$1")"/usb*/[0-9]*-1; do
        [ -d "$_d" ] && echo "$_d" && return 0
    done
    return 1
}

# A device counts as plugged in once the local USB core has configured it, as it would for a
# dongle plugged into a real gateway.
configured() {
    _dir=$(device_dir "$1") || return 1
    [ -n "$(cat "$_dir/bConfigurationValue" 2>/dev/null)" ]
}

gone() { ! device_dir "$1" >/dev/null; }

report() {
    _g=$GADGETS/hrh-$1
    [ -d "$_g" ] || return 0
    _busid=-
    _state=down
    if [ -n "$(cat "$_g/UDC")" ]; then
        _state=up
        _dir=$(device_dir "$1") && _busid=${_dir##*/}
    fi
    _vid=$(sed 's/^0x//' "$_g/idVendor")
    _pid=$(sed 's/^0x//' "$_g/idProduct")
    echo "HRH-GADGET name=$1 busid=$_busid id=$_vid:$_pid udc=dummy_udc.$(index_of "$1") state=$_state"
}

up() {
    _g=$GADGETS/hrh-$1
    [ -d "$_g" ] || die "gadget $1 does not exist (run: hrh-gadgets.sh setup)"
    if [ -z "$(cat "$_g/UDC")" ]; then
        echo "dummy_udc.$(index_of "$1")" >"$_g/UDC" || die "cannot bind gadget $1 to its UDC"
    fi
    poll 30 configured "$1" || die "gadget $1 was not enumerated within 30 s"
    report "$1"
}

down() {
    _g=$GADGETS/hrh-$1
    [ -d "$_g" ] || die "gadget $1 does not exist"
    if [ -n "$(cat "$_g/UDC")" ]; then
        echo "" >"$_g/UDC" || die "cannot unbind gadget $1 from its UDC"
    fi
    poll 30 gone "$1" || die "gadget $1 still enumerated 30 s after the unbind"
    report "$1"
}

# new_gadget NAME CLASS SUBCLASS PROTOCOL PRODUCT: the device-level part of a gadget with one
# configuration.
new_gadget() {
    _g=$GADGETS/hrh-$1
    mkdir "$_g" || die "cannot create $_g"
    echo 0x1209 >"$_g/idVendor"
    product_id_of "$1" >"$_g/idProduct"
    echo 0x0100 >"$_g/bcdDevice"
    echo 0x0200 >"$_g/bcdUSB"
    echo "$2" >"$_g/bDeviceClass"
    echo "$3" >"$_g/bDeviceSubClass"
    echo "$4" >"$_g/bDeviceProtocol"
    mkdir "$_g/strings/0x409"
    echo "vUSB test bed" >"$_g/strings/0x409/manufacturer"
    echo "$5" >"$_g/strings/0x409/product"
    echo "HRH-$1-0001" >"$_g/strings/0x409/serialnumber"
    mkdir "$_g/configs/c.1" "$_g/configs/c.1/strings/0x409"
    echo 100 >"$_g/configs/c.1/MaxPower"
    echo "$5" >"$_g/configs/c.1/strings/0x409/configuration"
}

# add_function NAME FUNCTION: creates functions/FUNCTION and puts it into the configuration.
add_function() {
    _g=$GADGETS/hrh-$1
    mkdir "$_g/functions/$2" || die "cannot create function $2 for gadget $1"
}

link_function() {
    _g=$GADGETS/hrh-$1
    ln -s "$_g/functions/$2" "$_g/configs/c.1/" || die "cannot add function $2 to gadget $1"
}

setup() {
    storage_mib=${1:-16}
    case "${2:-}" in
    "") ;;
    sink)
        NUM_UDC=4
        ALL="$ALL sink"
        ;;
    *) die "unknown setup option '$2' (sink is the only one)" ;;
    esac
    # One UDC (and root hub) per gadget; a UDC takes one gadget at a time.
    modprobe dummy_hcd num=$NUM_UDC || die "modprobe dummy_hcd failed"
    for m in libcomposite usb_f_acm usb_f_mass_storage usb_f_hid; do
        modprobe "$m" || die "modprobe $m failed"
    done
    if [ "$NUM_UDC" -eq 4 ]; then
        modprobe usb_f_ss_lb || die "modprobe usb_f_ss_lb failed"
    fi
    grep -q " $CONFIGFS configfs" /proc/mounts ||
        mount -t configfs configfs "$CONFIGFS" || die "cannot mount configfs"
    poll 10 test -e /sys/class/udc/dummy_udc.$((NUM_UDC - 1)) ||
        die "dummy_hcd did not create $NUM_UDC UDCs"

    # Interface Association Descriptors (f_acm and f_uac2 emit one) want the device class
    # "Miscellaneous / Common / IAD" (ef/02/01); the others leave the class to the interfaces.
    new_gadget acm 0xef 0x02 0x01 "HRH serial port"
    add_function acm acm.usb0
    link_function acm acm.usb0

    dd if=/dev/zero of="$STORAGE_IMG" bs=1M count="$storage_mib" 2>/dev/null ||
        die "cannot create $STORAGE_IMG"
    new_gadget storage 0x00 0x00 0x00 "HRH storage"
    add_function storage mass_storage.usb0
    echo "$STORAGE_IMG" >"$GADGETS/hrh-storage/functions/mass_storage.usb0/lun.0/file" ||
        die "cannot attach $STORAGE_IMG to the storage gadget"
    link_function storage mass_storage.usb0

    new_gadget hid 0x00 0x00 0x00 "HRH sensor (HID)"
    add_function hid hid.usb0
    f=$GADGETS/hrh-hid/functions/hid.usb0
    echo 0 >"$f/protocol"
    echo 0 >"$f/subclass"
    echo 8 >"$f/report_length"
    # Vendor-defined page, one application collection, one 8-byte input report and one 8-byte
    # output report, no report ids: the host binds hid-generic (and hidraw) and no input
    # handler, so reports reach nobody but the test.
    #   06 00 ff  Usage Page (Vendor 0xff00)    09 01  Usage (1)   a1 01  Collection (Application)
    #   15 00     Logical Minimum (0)           26 ff 00  Logical Maximum (255)
    #   75 08     Report Size (8)               95 08  Report Count (8)
    #   09 01     Usage (1)                     81 02  Input (Data,Var,Abs)
    #   95 08     Report Count (8)              09 01  Usage (1)   91 02  Output (Data,Var,Abs)
    #   c0        End Collection
    printf '\006\000\377\011\001\241\001\025\000\046\377\000\165\010\225\010\011\001\201\002\225\010\011\001\221\002\300' \
        >"$f/report_desc"
    link_function hid hid.usb0

    if [ "$NUM_UDC" -eq 4 ]; then
        # Vendor class: no driver of the HRH's binds it. Bulk IN first, so that the UDC's
        # autoconfiguration makes it endpoint 1 and the OUT one endpoint 2. Pattern 2: the
        # source sends what its buffers hold and the sink checks nothing (with the other
        # patterns it halts its endpoint at the first byte off the pattern). The 64 KiB
        # requests, 4 queued per endpoint, keep the gadget side from being what a server
        # waits for.
        new_gadget sink 0xff 0x00 0x00 "HRH bulk sink"
        add_function sink SourceSink.usb0
        f=$GADGETS/hrh-sink/functions/SourceSink.usb0
        echo 2 >"$f/pattern"
        echo 65536 >"$f/bulk_buflen"
        echo 4 >"$f/bulk_qlen"
        link_function sink SourceSink.usb0
    fi

    for name in $ALL; do
        up "$name" >/dev/null
    done
    [ -c /dev/ttyGS0 ] || die "/dev/ttyGS0 (gadget side of the serial port) is missing"
    [ -c /dev/hidg0 ] || die "/dev/hidg0 (gadget side of the HID device) is missing"
    list
}

list() {
    for name in $ALL; do
        report "$name"
    done
}

[ "$(id -u)" -eq 0 ] || die "must run as root"
case "${1:-}" in
setup)
    shift
    setup "$@"
    ;;
up | down)
    [ $# -eq 2 ] || die "usage: hrh-gadgets.sh $1 NAME"
    index_of "$2" >/dev/null
    "$1" "$2"
    ;;
list) list ;;
hcd)
    [ $# -eq 2 ] || die "usage: hrh-gadgets.sh hcd NAME"
    echo "/sys/devices/platform/dummy_hcd.$(index_of "$2")"
    ;;
*) die "usage: hrh-gadgets.sh setup [STORAGE_MIB] | up NAME | down NAME | list | hcd NAME" ;;
esac
