// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-usb host controller: root-hub emulation and port events.
 *
 * Port state lives here, as the USB core's hub driver reads it: the device
 * only says when a device comes and goes (eventq) and resets a device when
 * asked (controlq). Everything runs under vu->lock.
 */

#include <linux/slab.h>
#include <linux/usb/ch11.h>

#include "virtio_usb.h"

#define PORT_C(bit)		((u32)(bit) << 16)
#define PORT_SPEED_BITS		(USB_PORT_STAT_LOW_SPEED | USB_PORT_STAT_HIGH_SPEED)

/*
 * The changes a port reports to the hub driver, which clears each after
 * handling it. Reporting a bit it never clears would make it poll the
 * root hub again at once, for ever: a vCPU spent on nothing.
 */
#define PORT_C_MASK	PORT_C(USB_PORT_STAT_C_CONNECTION | USB_PORT_STAT_C_ENABLE | \
			       USB_PORT_STAT_C_SUSPEND | USB_PORT_STAT_C_OVERCURRENT | \
			       USB_PORT_STAT_C_RESET)

static const struct {
	struct usb_bos_descriptor bos;
	struct usb_ss_cap_descriptor ss_cap;
} __packed vusb_usb3_bos = {
	.bos = {
		.bLength = USB_DT_BOS_SIZE,
		.bDescriptorType = USB_DT_BOS,
		.wTotalLength = cpu_to_le16(sizeof(vusb_usb3_bos)),
		.bNumDeviceCaps = 1,
	},
	.ss_cap = {
		.bLength = USB_DT_USB_SS_CAP_SIZE,
		.bDescriptorType = USB_DT_DEVICE_CAPABILITY,
		.bDevCapabilityType = USB_SS_CAP_TYPE,
		.wSpeedSupported = cpu_to_le16(USB_5GBPS_OPERATION),
		.bFunctionalitySupport = ilog2(USB_5GBPS_OPERATION),
	},
};

/*
 * Hub replies are little-endian; written bytewise, as the unaligned-access
 * header moved between kernel versions.
 */
static void vusb_put_le16(char *buf, u16 val)
{
	__le16 le = cpu_to_le16(val);

	memcpy(buf, &le, sizeof(le));
}

static bool vusb_port_is_usb3(struct vusb *vu, unsigned int port)
{
	return port > vu->usb2_ports;
}

/* The root hub that holds device port @port. */
struct usb_hcd *vusb_port_hcd(struct vusb *vu, unsigned int port)
{
	return vusb_port_is_usb3(vu, port) ? vu->hcd3 : vu->hcd2;
}

static bool vusb_speed_fits(bool usb3, u8 speed)
{
	if (usb3)
		return speed == USB_SPEED_SUPER || speed == USB_SPEED_SUPER_PLUS;
	return speed == USB_SPEED_LOW || speed == USB_SPEED_FULL ||
	       speed == USB_SPEED_HIGH;
}

static u32 vusb_power_bit(bool usb3)
{
	return usb3 ? USB_SS_PORT_STAT_POWER : USB_PORT_STAT_POWER;
}

/* Ends a reset with the port enabled at the device's speed. */
static void vusb_port_enable(struct vusb_port *p, bool usb3)
{
	p->status &= ~(USB_PORT_STAT_RESET | PORT_SPEED_BITS);
	p->status |= USB_PORT_STAT_ENABLE | PORT_C(USB_PORT_STAT_C_RESET);
	if (usb3)
		return;
	if (p->speed == USB_SPEED_LOW)
		p->status |= USB_PORT_STAT_LOW_SPEED;
	else if (p->speed == USB_SPEED_HIGH)
		p->status |= USB_PORT_STAT_HIGH_SPEED;
}

/*
 * SetPortFeature(PORT_RESET). The first reset after a CONNECT completes here
 * (the device is fresh, as vhci-hcd assumes); later ones reset the device
 * behind the port and complete when the device answers. @ctrl is a buffer
 * for the PORT_RESET request, taken if used.
 */
static void vusb_port_start_reset(struct vusb *vu, struct vusb_port *p,
				  unsigned int port, bool usb3,
				  struct vusb_ctrl **ctrl)
{
	struct vusb_ctrl *c = *ctrl;

	p->status &= ~(USB_PORT_STAT_ENABLE | PORT_SPEED_BITS);
	if (!p->speed) {
		// Nothing to reset; the hub driver finds the port empty.
		p->status &= ~USB_PORT_STAT_RESET;
		p->status |= PORT_C(USB_PORT_STAT_C_RESET);
		return;
	}
	if (p->fresh || vusb_stopped(vu) || !c) {
		if (!p->fresh && !vusb_stopped(vu))
			dev_warn_ratelimited(&vu->vdev->dev,
					     "port %u: no memory to reset the device\n",
					     port);
		p->fresh = false;
		vusb_port_enable(p, usb3);
		return;
	}
	p->status |= USB_PORT_STAT_RESET;
	// The answer to a reset already under way ends this one too.
	if (p->reset_pending)
		return;
	dev_dbg(&vu->vdev->dev, "port %u: resetting the device\n", port);
	*ctrl = NULL;
	c->req.code = cpu_to_le32(VIRTIO_USB_CTRL_PORT_RESET);
	c->req.port = port;
	c->gen = p->gen;
	p->reset_pending = true;
	vusb_ctrl_submit(vu, c);
}

/* The device answered a PORT_RESET. */
void vusb_port_reset_done(struct vusb *vu, struct vusb_ctrl *ctrl)
{
	unsigned int port = ctrl->req.port;
	struct vusb_port *p = &vu->ports[port];
	bool usb3 = vusb_port_is_usb3(vu, port);
	u32 status = le32_to_cpu(ctrl->resp.status);
	u8 speed = ctrl->resp.speed;

	// A connect or disconnect since the request went out settles the
	// port on its own.
	if (ctrl->gen != p->gen || !p->reset_pending)
		return;
	p->reset_pending = false;
	if (status != VIRTIO_USB_S_OK) {
		dev_warn_ratelimited(&vu->vdev->dev,
				     "port %u: device reset failed (status %u)\n",
				     port, status);
		p->status &= ~USB_PORT_STAT_RESET;
		p->status |= PORT_C(USB_PORT_STAT_C_RESET);
		return;
	}
	if (!vusb_speed_fits(usb3, speed)) {
		dev_warn_ratelimited(&vu->vdev->dev,
				     "port %u: reset reports speed %u, keeping %u\n",
				     port, speed, p->speed);
		speed = p->speed;
	}
	dev_dbg(&vu->vdev->dev, "port %u: reset done, speed %u\n", port, speed);
	p->speed = speed;
	vusb_port_enable(p, usb3);
}

/* The port is empty now; the hub driver learns it from the change bit. */
static void vusb_port_clear(struct vusb_port *p)
{
	p->gen++;
	p->udev = NULL;
	p->speed = 0;
	p->fresh = false;
	p->reset_pending = false;
	p->status &= ~(USB_PORT_STAT_CONNECTION | USB_PORT_STAT_ENABLE |
		       USB_PORT_STAT_RESET | USB_PORT_STAT_SUSPEND |
		       PORT_SPEED_BITS);
	p->status |= PORT_C(USB_PORT_STAT_C_CONNECTION);
}

/*
 * Every port empties, as when the device is reset: the device announces
 * what is still attached afterwards (spec 7). Called with vu->lock held.
 */
void vusb_ports_empty(struct vusb *vu)
{
	unsigned int i;

	for (i = 1; i <= vu->usb2_ports + vu->usb3_ports; i++)
		if (vu->ports[i].speed)
			vusb_port_clear(&vu->ports[i]);
}

/* A CONNECT, DISCONNECT or RESTARTED from the eventq (spec 6, 7.1). */
void vusb_port_event(struct vusb *vu, const struct virtio_usb_event *evt)
{
	unsigned int port = evt->port;
	u32 type = le32_to_cpu(evt->type);
	struct vusb_port *p;
	bool usb3;

	if (type == VIRTIO_USB_EVT_RESTARTED) {
		dev_warn(&vu->vdev->dev,
			 "the device restarted and lost its transfers: resetting it\n");
		schedule_work(&vu->restart_work);
		return;
	}
	if (!port || port > vu->usb2_ports + vu->usb3_ports) {
		dev_warn_ratelimited(&vu->vdev->dev,
				     "event %u for port %u, which does not exist\n",
				     type, port);
		return;
	}
	p = &vu->ports[port];
	usb3 = vusb_port_is_usb3(vu, port);
	switch (type) {
	case VIRTIO_USB_EVT_CONNECT:
		if (!vusb_speed_fits(usb3, evt->speed)) {
			dev_warn_ratelimited(&vu->vdev->dev,
					     "port %u: connect at speed %u does not fit a USB %s hub\n",
					     port, evt->speed, usb3 ? "3" : "2.0");
			return;
		}
		if (p->speed)
			dev_warn_ratelimited(&vu->vdev->dev,
					     "port %u: connect on an occupied port, taken as a replug\n",
					     port);
		dev_dbg(&vu->vdev->dev, "port %u: connect, speed %u\n", port,
			evt->speed);
		p->gen++;
		p->udev = NULL;
		p->speed = evt->speed;
		p->fresh = true;
		p->reset_pending = false;
		p->status &= ~(USB_PORT_STAT_ENABLE | USB_PORT_STAT_RESET |
			       USB_PORT_STAT_SUSPEND | PORT_SPEED_BITS);
		p->status |= USB_PORT_STAT_CONNECTION |
			     PORT_C(USB_PORT_STAT_C_CONNECTION);
		break;
	case VIRTIO_USB_EVT_DISCONNECT:
		if (!p->speed) {
			dev_warn_ratelimited(&vu->vdev->dev,
					     "port %u: disconnect on an empty port\n",
					     port);
			return;
		}
		dev_dbg(&vu->vdev->dev, "port %u: disconnect\n", port);
		// Transfers in flight complete with NO_DEVICE from the
		// device; their buffers are the device's until then.
		vusb_port_clear(p);
		break;
	default:
		dev_warn_ratelimited(&vu->vdev->dev,
				     "port %u: unknown event type %u\n", port,
				     type);
		break;
	}
}

int vusb_hub_status_data(struct usb_hcd *hcd, char *buf)
{
	struct vusb_rh *rh = hcd_to_rh(hcd);
	struct vusb *vu = rh->vu;
	int len = DIV_ROUND_UP(rh->nports + 1, 8);
	unsigned long flags;
	bool changed = false;
	unsigned int i;

	memset(buf, 0, len);
	spin_lock_irqsave(&vu->lock, flags);
	if (!HCD_HW_ACCESSIBLE(hcd))
		goto out;
	for (i = 1; i <= rh->nports; i++) {
		if (vu->ports[rh->first_port + i - 1].status & PORT_C_MASK) {
			buf[i / 8] |= BIT(i % 8);
			changed = true;
		}
	}
	if (changed && hcd->state == HC_STATE_SUSPENDED)
		usb_hcd_resume_root_hub(hcd);
out:
	spin_unlock_irqrestore(&vu->lock, flags);
	return changed ? len : 0;
}

static void vusb_hub_descriptor(struct vusb_rh *rh, bool usb3,
				struct usb_hub_descriptor *desc)
{
	int width = rh->nports / 8 + 1;

	memset(desc, 0, sizeof(*desc));
	desc->bNbrPorts = rh->nports;
	desc->wHubCharacteristics = cpu_to_le16(HUB_CHAR_INDV_PORT_LPSM |
						HUB_CHAR_COMMON_OCPM);
	if (usb3) {
		desc->bDescriptorType = USB_DT_SS_HUB;
		desc->bDescLength = USB_DT_SS_HUB_SIZE;
		desc->u.ss.bHubHdrDecLat = 0x04;
		return;
	}
	desc->bDescriptorType = USB_DT_HUB;
	desc->bDescLength = USB_DT_HUB_NONVAR_SIZE + 2 * width;
	// All ports removable; the port power mask is all ones.
	memset(&desc->u.hs.DeviceRemovable[width], 0xff, width);
}

static int vusb_clear_port_feature(struct vusb_port *p, bool usb3, u16 value)
{
	switch (value) {
	case USB_PORT_FEAT_SUSPEND:
		if (usb3)
			return -EPIPE;
		// Nothing to signal: resume completes at once.
		if (p->status & USB_PORT_STAT_SUSPEND) {
			p->status &= ~USB_PORT_STAT_SUSPEND;
			p->status |= PORT_C(USB_PORT_STAT_C_SUSPEND);
		}
		return 0;
	case USB_PORT_FEAT_POWER:
		p->status &= ~vusb_power_bit(usb3);
		return 0;
	case USB_PORT_FEAT_ENABLE:
		p->status &= ~(USB_PORT_STAT_ENABLE | PORT_SPEED_BITS);
		return 0;
	default:
		if (value >= 32)
			return -EPIPE;
		p->status &= ~BIT(value);
		return 0;
	}
}

static int vusb_set_port_feature(struct vusb *vu, struct vusb_port *p,
				 unsigned int port, bool usb3, u16 value,
				 struct vusb_ctrl **reset)
{
	switch (value) {
	case USB_PORT_FEAT_LINK_STATE:
	case USB_PORT_FEAT_U1_TIMEOUT:
	case USB_PORT_FEAT_U2_TIMEOUT:
		// No link to manage behind a virtual port.
		return usb3 ? 0 : -EPIPE;
	case USB_PORT_FEAT_SUSPEND:
		if (usb3)
			return -EPIPE;
		p->status |= USB_PORT_STAT_SUSPEND;
		return 0;
	case USB_PORT_FEAT_POWER:
		p->status |= vusb_power_bit(usb3);
		return 0;
	case USB_PORT_FEAT_BH_PORT_RESET:
		if (!usb3)
			return -EPIPE;
		fallthrough;
	case USB_PORT_FEAT_RESET:
		if (!(p->status & vusb_power_bit(usb3)))
			return 0;
		vusb_port_start_reset(vu, p, port, usb3, reset);
		return 0;
	default:
		if (value >= 32)
			return -EPIPE;
		// Features 16 and up are not states of the port (change
		// bits, test modes, indicators, USB 3 remote wake masks):
		// nothing to keep for a virtual port.
		if (value >= 16) {
			dev_dbg(&vu->vdev->dev, "port %u: feature %u ignored\n",
				port, value);
			return 0;
		}
		if (p->status & vusb_power_bit(usb3))
			p->status |= BIT(value);
		return 0;
	}
}

int vusb_hub_control(struct usb_hcd *hcd, u16 type_req, u16 value, u16 index,
		     char *buf, u16 length)
{
	struct vusb_rh *rh = hcd_to_rh(hcd);
	struct vusb *vu = rh->vu;
	bool usb3 = hcd->speed == HCD_USB3;
	unsigned int rhport = index & 0xff;
	struct vusb_ctrl *reset = NULL;
	struct vusb_port *p = NULL;
	unsigned int port = 0;
	unsigned long flags;
	bool poll = false;
	int ret = 0;

	if (!HCD_HW_ACCESSIBLE(hcd))
		return -ETIMEDOUT;
	if (rhport >= 1 && rhport <= rh->nports) {
		port = rh->first_port + rhport - 1;
		p = &vu->ports[port];
	}
	if (type_req == SetPortFeature && (value == USB_PORT_FEAT_RESET ||
					   value == USB_PORT_FEAT_BH_PORT_RESET))
		reset = kzalloc(sizeof(*reset), GFP_ATOMIC);

	spin_lock_irqsave(&vu->lock, flags);
	switch (type_req) {
	case ClearHubFeature:
		break;
	case SetHubFeature:
		ret = -EPIPE;
		break;
	case GetHubStatus:
		memset(buf, 0, 4);
		break;
	case GetHubDescriptor:
		if (usb3 && value != (USB_DT_SS_HUB << 8)) {
			ret = -EPIPE;
			break;
		}
		vusb_hub_descriptor(rh, usb3, (struct usb_hub_descriptor *)buf);
		break;
	case DeviceRequest | USB_REQ_GET_DESCRIPTOR:
		if (!usb3 || (value >> 8) != USB_DT_BOS) {
			ret = -EPIPE;
			break;
		}
		memcpy(buf, &vusb_usb3_bos, sizeof(vusb_usb3_bos));
		ret = sizeof(vusb_usb3_bos);
		break;
	case GetPortStatus:
		if (!p) {
			ret = -EPIPE;
			break;
		}
		vusb_put_le16(buf, p->status & 0xffff);
		vusb_put_le16(buf + 2, p->status >> 16);
		break;
	case ClearPortFeature:
		ret = p ? vusb_clear_port_feature(p, usb3, value) : -EPIPE;
		break;
	case SetPortFeature:
		ret = p ? vusb_set_port_feature(vu, p, port, usb3, value, &reset) :
			  -EPIPE;
		break;
	case GetPortErrorCount:
		if (!usb3) {
			ret = -EPIPE;
			break;
		}
		vusb_put_le16(buf, 0);
		break;
	case SetHubDepth:
		if (!usb3)
			ret = -EPIPE;
		break;
	default:
		dev_dbg(&vu->vdev->dev, "unhandled hub request %04x %04x %04x %u\n",
			type_req, value, index, length);
		ret = -EPIPE;
		break;
	}
	if (p && (p->status & PORT_C_MASK))
		poll = true;
	spin_unlock_irqrestore(&vu->lock, flags);

	kfree(reset);
	if (poll)
		usb_hcd_poll_rh_status(hcd);
	return ret;
}
