/* SPDX-License-Identifier: GPL-2.0 */
/*
 * virtio-usb host controller: wire format of docs/virtio-usb.md (vUSB
 * dialect 1.0) and the driver's shared state.
 */
#ifndef VIRTIO_USB_H
#define VIRTIO_USB_H

#include <linux/list.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/usb.h>
#include <linux/usb/hcd.h>
#include <linux/virtio.h>
#include <linux/workqueue.h>

/* No kernel header names the device ID this dialect borrows (spec 1.1). */
#define VIRTIO_ID_USB_DEFAULT		21

#define VIRTIO_USB_F_ISO		0
#define VIRTIO_USB_F_USB3		1

#define VIRTIO_USB_VQ_REQUEST		0
#define VIRTIO_USB_VQ_CONTROL		1
#define VIRTIO_USB_VQ_EVENT		2
#define VIRTIO_USB_NUM_VQS		3

#define VIRTIO_USB_MAGIC		"vUSB"
#define VIRTIO_USB_VERSION_MAJOR	1
#define VIRTIO_USB_MAX_PORTS		15

/**
 * struct virtio_usb_config - device configuration space (spec 2)
 * @magic: "vUSB"
 * @version_major: dialect major version, 1
 * @version_minor: dialect minor version
 * @usb2_ports: ports on the USB 2.0 root hub
 * @usb3_ports: ports on the USB 3 root hub
 * @max_requests: requests the device keeps in flight, 0 for no limit
 * @max_transfer: largest transfer length
 * @max_iso_packets: most isochronous packets in one request
 * @reserved: zero
 */
struct virtio_usb_config {
	u8 magic[4];
	__le16 version_major;
	__le16 version_minor;
	u8 usb2_ports;
	u8 usb3_ports;
	__le16 max_requests;
	__le32 max_transfer;
	__le16 max_iso_packets;
	u8 reserved[6];
} __packed;

#define VIRTIO_USB_T_CONTROL		0
#define VIRTIO_USB_T_ISOCHRONOUS	1
#define VIRTIO_USB_T_BULK		2
#define VIRTIO_USB_T_INTERRUPT		3

#define VIRTIO_USB_XFER_F_SHORT_NOT_OK	BIT(0)
#define VIRTIO_USB_XFER_F_ZERO_PACKET	BIT(1)
#define VIRTIO_USB_XFER_F_ISO_ASAP	BIT(2)

/**
 * struct virtio_usb_xfer_req - transfer request header (spec 4)
 * @id: driver's cookie, unique among requests in flight
 * @port: 1-based root-hub port
 * @endpoint: bEndpointAddress
 * @type: VIRTIO_USB_T_*
 * @reserved: zero
 * @flags: VIRTIO_USB_XFER_F_*
 * @length: size of the transfer buffer
 * @interval: endpoint polling interval
 * @start_frame: isochronous start frame without ISO_ASAP
 * @num_iso_packets: isochronous packets, 0 for other types
 * @setup: control setup packet
 */
struct virtio_usb_xfer_req {
	__le64 id;
	u8 port;
	u8 endpoint;
	u8 type;
	u8 reserved;
	__le32 flags;
	__le32 length;
	__le32 interval;
	__le32 start_frame;
	__le32 num_iso_packets;
	u8 setup[8];
} __packed;

/**
 * struct virtio_usb_iso_packet - one isochronous packet of a request
 * @offset: into the transfer buffer
 * @length: packet length
 */
struct virtio_usb_iso_packet {
	__le32 offset;
	__le32 length;
} __packed;

/**
 * struct virtio_usb_iso_result - the outcome of one isochronous packet
 * @actual_length: bytes transferred
 * @status: VIRTIO_USB_S_*
 */
struct virtio_usb_iso_result {
	__le32 actual_length;
	__le32 status;
} __packed;

/**
 * struct virtio_usb_xfer_resp - transfer response, the last bytes written
 * @status: VIRTIO_USB_S_*
 * @actual_length: bytes transferred
 * @start_frame: isochronous start frame
 * @error_count: isochronous packets that failed
 */
struct virtio_usb_xfer_resp {
	__le32 status;
	__le32 actual_length;
	__le32 start_frame;
	__le32 error_count;
} __packed;

#define VIRTIO_USB_S_OK			0
#define VIRTIO_USB_S_STALL		1
#define VIRTIO_USB_S_CANCELLED		2
#define VIRTIO_USB_S_NO_DEVICE		3
#define VIRTIO_USB_S_PROTOCOL		4
#define VIRTIO_USB_S_OVERFLOW		5
#define VIRTIO_USB_S_SHORT		6
#define VIRTIO_USB_S_TIMEOUT		7
#define VIRTIO_USB_S_INVALID		8
#define VIRTIO_USB_S_SHUTDOWN		9
#define VIRTIO_USB_S_ISO_PARTIAL	10
#define VIRTIO_USB_S_NOT_FOUND		11

#define VIRTIO_USB_CTRL_CANCEL		1
#define VIRTIO_USB_CTRL_PORT_RESET	2

/**
 * struct virtio_usb_ctrl_req - controlq request (spec 5)
 * @code: VIRTIO_USB_CTRL_*
 * @port: 1-based root-hub port
 * @reserved: zero
 * @id: CANCEL: the request to cancel
 */
struct virtio_usb_ctrl_req {
	__le32 code;
	u8 port;
	u8 reserved[3];
	__le64 id;
} __packed;

/**
 * struct virtio_usb_ctrl_resp - controlq response
 * @status: VIRTIO_USB_S_*
 * @speed: PORT_RESET: the device's speed after the reset
 * @reserved: zero
 */
struct virtio_usb_ctrl_resp {
	__le32 status;
	u8 speed;
	u8 reserved[3];
} __packed;

#define VIRTIO_USB_EVT_CONNECT		1
#define VIRTIO_USB_EVT_DISCONNECT	2
#define VIRTIO_USB_EVT_RESTARTED	3

/**
 * struct virtio_usb_event - eventq message (spec 6)
 * @type: VIRTIO_USB_EVT_*
 * @port: 1-based root-hub port
 * @speed: CONNECT: enum usb_device_speed
 * @reserved: zero
 */
struct virtio_usb_event {
	__le32 type;
	u8 port;
	u8 speed;
	__le16 reserved;
} __packed;

/* Event buffers kept on the eventq; events are small and rare. */
#define VUSB_EVENT_BUFS			16
/*
 * Scatter-gather is offered only when the device takes transfers this long:
 * usb-storage asks for up to 1 MiB at SuperSpeed (120 KiB below) in one URB,
 * which the device would refuse, where one URB per segment always fits.
 */
#define VUSB_SG_MIN_TRANSFER		(1U << 20)

/* A device that leaves CANCELs unanswered this long is reset (spec 7.1). */
#define VUSB_CANCEL_TIMEOUT		(15 * HZ)
#define VUSB_CANCEL_CHECK		(5 * HZ)

/**
 * struct vusb_port - one root-hub port as the hub driver sees it
 * @status: wPortStatus in the low half, wPortChange in the high half
 * @speed: enum usb_device_speed of the attached device, 0 when empty
 * @fresh: connected and not reset yet: the first reset completes locally
 * @reset_pending: a PORT_RESET is on the controlq
 * @gen: bumped on every connect and disconnect, so that a late reset answer
 *	 is not applied to another device
 * @udev: the device the hub driver addressed on this port since the last
 *	  connect, for its identity only (never dereferenced): URBs of a device
 *	  that was unplugged must not reach the one plugged in after it
 */
struct vusb_port {
	u32 status;
	u8 speed;
	bool fresh;
	bool reset_pending;
	u32 gen;
	struct usb_device *udev;
};

struct vusb;

/**
 * struct vusb_ctrl - a controlq request and its response buffer
 * @req: device-readable part
 * @resp: device-writable part
 * @node: on vusb.ctrl_pending while the controlq is full
 * @owner: CANCEL: the transfer it cancels, which it holds a reference on
 * @gen: PORT_RESET: vusb_port.gen when sent
 */
struct vusb_ctrl {
	struct virtio_usb_ctrl_req req;
	struct virtio_usb_ctrl_resp resp;
	struct list_head node;
	struct vusb_req *owner;
	u32 gen;
};

/**
 * struct vusb_req - one URB on its way through the requestq
 * @hdr: device-readable header
 * @resp: device-writable response
 * @cancel: the CANCEL sent for it, if any
 * @node: on vusb.backlog while waiting for room on the requestq
 * @urb: the URB
 * @hcd: the root hub the URB was submitted to
 * @vu: the controller
 * @bounce: a copy of the transfer buffer the device can reach, or NULL
 * @data_sg: a scatter-gather URB's segments, cut to the transfer's length
 * @iso: isochronous packet descriptors, device-readable
 * @iso_res: isochronous results, device-writable
 * @status: the URB's status, between completion and giveback
 * @refs: the transfer and its CANCEL each hold one
 * @queued: on the requestq (not in the backlog)
 * @cancel_sent: a CANCEL went out
 */
struct vusb_req {
	struct virtio_usb_xfer_req hdr;
	struct virtio_usb_xfer_resp resp;
	struct vusb_ctrl cancel;
	struct list_head node;
	struct urb *urb;
	struct usb_hcd *hcd;
	struct vusb *vu;
	void *bounce;
	struct scatterlist *data_sg;
	struct virtio_usb_iso_packet *iso;
	struct virtio_usb_iso_result *iso_res;
	int status;
	int refs;
	bool queued;
	bool cancel_sent;
};

/**
 * struct vusb_rh - private data of one Linux HCD (root hub)
 * @vu: the controller
 * @first_port: device port number of this hub's port 1
 * @nports: ports on this hub
 */
struct vusb_rh {
	struct vusb *vu;
	u8 first_port;
	u8 nports;
};

/**
 * struct vusb - one virtio-usb controller
 * @vdev: the virtio device
 * @vqs: requestq, controlq, eventq
 * @lock: protects everything below and the virtqueues
 * @hcd2: USB 2.0 root hub (primary HCD)
 * @hcd3: USB 3 root hub (shared HCD) or NULL
 * @usb2_ports: from the configuration space
 * @usb3_ports: from the configuration space, 0 without VIRTIO_USB_F_USB3
 * @max_requests: from the configuration space, 0 for no limit
 * @max_transfer: from the configuration space
 * @max_iso_packets: 0 without VIRTIO_USB_F_ISO
 * @max_segments: the most segments of a scatter-gather URB, 0 for none
 * @ports: indexed by device port number, [0] unused
 * @in_flight: transfers on the requestq
 * @next_id: the next transfer id
 * @backlog: transfers waiting for room on the requestq, in submission order
 * @ctrl_pending: controlq requests waiting for room
 * @events: eventq buffers
 * @ctrl_work: handles controlq and eventq completions in process context
 * @restart_work: resets and re-initialises a device that lost its state
 * @cancel_watch: looks for cancelled requests the device never gives back
 * @cancels_out: requests cancelled and not yet given back
 * @cancel_progress: when one last came back, or the first was cancelled
 * @dying: the device is being removed: nothing more goes to it
 * @restarting: the device is being reset: nothing goes to it meanwhile
 * @vqs_gone: re-initialisation failed; the device is unusable
 */
struct vusb {
	struct virtio_device *vdev;
	struct virtqueue *vqs[VIRTIO_USB_NUM_VQS];
	spinlock_t lock; // see above
	struct usb_hcd *hcd2;
	struct usb_hcd *hcd3;
	u8 usb2_ports;
	u8 usb3_ports;
	u16 max_requests;
	u32 max_transfer;
	u16 max_iso_packets;
	unsigned int max_segments;
	struct vusb_port ports[2 * VIRTIO_USB_MAX_PORTS + 1];
	unsigned int in_flight;
	u64 next_id;
	struct list_head backlog;
	struct list_head ctrl_pending;
	struct virtio_usb_event *events;
	struct work_struct ctrl_work;
	struct work_struct restart_work;
	struct delayed_work cancel_watch;
	unsigned int cancels_out;
	unsigned long cancel_progress;
	bool dying;
	bool restarting;
	bool vqs_gone;
};

/* Whether requests may go to the device. Called with vu->lock held. */
static inline bool vusb_stopped(const struct vusb *vu)
{
	return vu->dying || vu->restarting;
}

static inline struct vusb_rh *hcd_to_rh(struct usb_hcd *hcd)
{
	return (struct vusb_rh *)hcd->hcd_priv;
}

static inline struct vusb *hcd_to_vusb(struct usb_hcd *hcd)
{
	return hcd_to_rh(hcd)->vu;
}

/* vusb_hub.c */
int vusb_hub_status_data(struct usb_hcd *hcd, char *buf);
int vusb_hub_control(struct usb_hcd *hcd, u16 type_req, u16 value, u16 index,
		     char *buf, u16 length);
void vusb_port_event(struct vusb *vu, const struct virtio_usb_event *evt);
void vusb_port_reset_done(struct vusb *vu, struct vusb_ctrl *ctrl);
void vusb_ports_empty(struct vusb *vu);
struct usb_hcd *vusb_port_hcd(struct vusb *vu, unsigned int port);

/* vusb_urb.c */
int vusb_urb_enqueue(struct usb_hcd *hcd, struct urb *urb, gfp_t mem_flags);
int vusb_urb_dequeue(struct usb_hcd *hcd, struct urb *urb, int status);
void vusb_request_done(struct virtqueue *vq);
void vusb_req_put(struct vusb_req *req);
void vusb_giveback_all(struct vusb *vu);

/* vusb_main.c */
void vusb_ctrl_submit(struct vusb *vu, struct vusb_ctrl *ctrl);
void vusb_ctrl_release(struct vusb_ctrl *ctrl);
void vusb_cancel_sent(struct vusb *vu);
void vusb_cancel_settled(struct vusb *vu);

#endif /* VIRTIO_USB_H */
