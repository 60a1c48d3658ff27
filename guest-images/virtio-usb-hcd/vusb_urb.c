// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-usb host controller: the transfer path. Each URB becomes one
 * requestq chain (spec 4) and is given back when the device returns it.
 */

#include <linux/mm.h>
#include <linux/slab.h>

#include "virtio_usb.h"

static int vusb_status_to_errno(u32 status)
{
	switch (status) {
	case VIRTIO_USB_S_OK:
		return 0;
	case VIRTIO_USB_S_STALL:
		return -EPIPE;
	case VIRTIO_USB_S_CANCELLED:
		return -ECONNRESET;
	case VIRTIO_USB_S_NO_DEVICE:
		return -ENODEV;
	case VIRTIO_USB_S_OVERFLOW:
		return -EOVERFLOW;
	case VIRTIO_USB_S_SHORT:
		return -EREMOTEIO;
	case VIRTIO_USB_S_TIMEOUT:
		return -ETIMEDOUT;
	case VIRTIO_USB_S_INVALID:
		return -EINVAL;
	case VIRTIO_USB_S_SHUTDOWN:
		return -ESHUTDOWN;
	case VIRTIO_USB_S_ISO_PARTIAL:
		return -EXDEV;
	case VIRTIO_USB_S_PROTOCOL:
	default:
		return -EPROTO;
	}
}

static void vusb_req_free(struct vusb_req *req)
{
	kfree(req->bounce);
	kfree(req->data_sg);
	kfree(req->iso);
	kfree(req->iso_res);
	kfree(req);
}

/* Drops a reference; called with vu->lock held. */
void vusb_req_put(struct vusb_req *req)
{
	if (--req->refs == 0)
		vusb_req_free(req);
}

/* The device on a root-hub port that @udev is or hangs off. */
static struct usb_device *vusb_top_device(struct usb_device *udev)
{
	while (udev->parent && udev->parent->parent)
		udev = udev->parent;
	return udev;
}

/* The device port of the root-hub port @urb's device hangs off. */
static unsigned int vusb_urb_port(struct usb_hcd *hcd, struct urb *urb)
{
	struct vusb_rh *rh = hcd_to_rh(hcd);
	struct usb_device *udev = vusb_top_device(urb->dev);

	if (!udev->parent || udev->portnum < 1 || udev->portnum > rh->nports)
		return 0;
	return rh->first_port + udev->portnum - 1;
}

/*
 * Whether @urb comes from the device now on @p: the one addressed there
 * since the last connect or, before any address, the one being enumerated
 * at address 0. Called with vu->lock held.
 */
static bool vusb_urb_is_current(struct vusb_port *p, struct urb *urb)
{
	if (!p->speed)
		return false;
	if (p->udev)
		return p->udev == vusb_top_device(urb->dev);
	return usb_pipedevice(urb->pipe) == 0;
}

/*
 * The transfer buffer goes to the device by physical address; a buffer
 * outside the linear map (vmalloc, a virtually mapped stack) is copied.
 */
static bool vusb_buffer_is_linear(const void *buf, u32 len)
{
	return virt_addr_valid(buf) && virt_addr_valid(buf + len - 1);
}

static int vusb_req_setup_iso(struct vusb *vu, struct vusb_req *req,
			      struct urb *urb, u32 len, gfp_t gfp)
{
	int n = urb->number_of_packets;
	int i;

	if (!vu->max_iso_packets) {
		dev_err_ratelimited(&urb->dev->dev,
				    "isochronous transfers are not supported by this controller\n");
		return -EOPNOTSUPP;
	}
	if (n <= 0 || n > vu->max_iso_packets) {
		dev_err_ratelimited(&urb->dev->dev,
				    "%d isochronous packets, the controller takes 1 to %u\n",
				    n, vu->max_iso_packets);
		return -EMSGSIZE;
	}
	req->iso = kcalloc(n, sizeof(*req->iso), gfp);
	req->iso_res = kcalloc(n, sizeof(*req->iso_res), gfp);
	if (!req->iso || !req->iso_res)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		struct usb_iso_packet_descriptor *d = &urb->iso_frame_desc[i];

		if ((u64)d->offset + d->length > len)
			return -EINVAL;
		req->iso[i].offset = cpu_to_le32(d->offset);
		req->iso[i].length = cpu_to_le32(d->length);
	}
	req->hdr.num_iso_packets = cpu_to_le32(n);
	return 0;
}

/*
 * The data part of a scatter-gather URB: its segments up to @len bytes. The
 * device takes the chain's data as one byte stream (spec 3), so segments of
 * any length go as they are, without a copy.
 */
static int vusb_req_setup_sg(struct vusb_req *req, struct urb *urb, u32 len,
			     gfp_t gfp)
{
	struct scatterlist *s, *d;
	unsigned int n = 0;
	u32 left = len;
	int i;

	req->data_sg = kmalloc_array(urb->num_sgs, sizeof(*req->data_sg), gfp);
	if (!req->data_sg)
		return -ENOMEM;
	sg_init_table(req->data_sg, urb->num_sgs);
	for_each_sg(urb->sg, s, urb->num_sgs, i) {
		u32 take = min(left, s->length);

		if (!left)
			break;
		if (!take)
			continue;
		d = &req->data_sg[n++];
		sg_set_page(d, sg_page(s), take, s->offset);
		left -= take;
	}
	if (left) {
		dev_err_ratelimited(&urb->dev->dev,
				    "scatter-gather list holds %u of %u bytes\n",
				    len - left, len);
		return -EINVAL;
	}
	sg_mark_end(&req->data_sg[n - 1]);
	return 0;
}

/* Builds the request for @urb, everything but its id. */
static struct vusb_req *vusb_req_alloc(struct vusb *vu, struct usb_hcd *hcd,
				       struct urb *urb, unsigned int port,
				       gfp_t gfp)
{
	bool is_in = usb_pipein(urb->pipe);
	u32 len = urb->transfer_buffer_length;
	struct usb_ctrlrequest *setup;
	struct vusb_req *req;
	u32 flags = 0;
	u8 type;
	int err;

	req = kzalloc(sizeof(*req), gfp);
	if (!req)
		return ERR_PTR(-ENOMEM);
	req->urb = urb;
	req->hcd = hcd;
	req->vu = vu;
	req->refs = 1;

	switch (usb_pipetype(urb->pipe)) {
	case PIPE_CONTROL:
		setup = (struct usb_ctrlrequest *)urb->setup_packet;
		// The device takes wLength as the length and the setup
		// packet's direction as the transfer's (spec 4).
		if (le16_to_cpu(setup->wLength) > len) {
			err = -EINVAL;
			goto err;
		}
		len = le16_to_cpu(setup->wLength);
		is_in = len && (setup->bRequestType & USB_DIR_IN);
		memcpy(req->hdr.setup, setup, sizeof(req->hdr.setup));
		type = VIRTIO_USB_T_CONTROL;
		break;
	case PIPE_ISOCHRONOUS:
		type = VIRTIO_USB_T_ISOCHRONOUS;
		err = vusb_req_setup_iso(vu, req, urb, len, gfp);
		if (err)
			goto err;
		break;
	case PIPE_INTERRUPT:
		type = VIRTIO_USB_T_INTERRUPT;
		break;
	default:
		type = VIRTIO_USB_T_BULK;
		break;
	}

	if (is_in && (urb->transfer_flags & URB_SHORT_NOT_OK))
		flags |= VIRTIO_USB_XFER_F_SHORT_NOT_OK;
	if (!is_in && (urb->transfer_flags & URB_ZERO_PACKET))
		flags |= VIRTIO_USB_XFER_F_ZERO_PACKET;
	if (urb->transfer_flags & URB_ISO_ASAP)
		flags |= VIRTIO_USB_XFER_F_ISO_ASAP;

	req->hdr.port = port;
	req->hdr.endpoint = usb_pipeendpoint(urb->pipe) | (is_in ? USB_DIR_IN : 0);
	req->hdr.type = type;
	req->hdr.flags = cpu_to_le32(flags);
	req->hdr.length = cpu_to_le32(len);
	req->hdr.interval = cpu_to_le32(urb->interval);
	req->hdr.start_frame = cpu_to_le32(urb->start_frame);

	if (len && urb->num_sgs) {
		err = vusb_req_setup_sg(req, urb, len, gfp);
		if (err)
			goto err;
	} else if (len && !vusb_buffer_is_linear(urb->transfer_buffer, len)) {
		// Copied both ways so that IN bytes the device does not
		// write keep their old contents, as the spec promises.
		req->bounce = kmemdup(urb->transfer_buffer, len, gfp);
		if (!req->bounce) {
			err = -ENOMEM;
			goto err;
		}
	}
	return req;

err:
	vusb_req_free(req);
	return ERR_PTR(err);
}

static int vusb_req_add(struct vusb *vu, struct vusb_req *req)
{
	struct scatterlist hdr, iso, data, iso_res, resp, *sgs[5];
	void *buf = req->bounce ?: req->urb->transfer_buffer;
	u32 len = le32_to_cpu(req->hdr.length);
	u32 npk = le32_to_cpu(req->hdr.num_iso_packets);
	bool is_in = req->hdr.endpoint & USB_DIR_IN;
	unsigned int out = 0, in = 0;

	sg_init_one(&hdr, &req->hdr, sizeof(req->hdr));
	sgs[out++] = &hdr;
	if (npk) {
		sg_init_one(&iso, req->iso, npk * sizeof(*req->iso));
		sgs[out++] = &iso;
	}
	if (len && !req->data_sg)
		sg_init_one(&data, buf, len);
	if (len && !is_in)
		sgs[out++] = req->data_sg ?: &data;
	if (len && is_in)
		sgs[out + in++] = req->data_sg ?: &data;
	if (npk) {
		sg_init_one(&iso_res, req->iso_res, npk * sizeof(*req->iso_res));
		sgs[out + in++] = &iso_res;
	}
	sg_init_one(&resp, &req->resp, sizeof(req->resp));
	sgs[out + in++] = &resp;
	return virtqueue_add_sgs(vu->vqs[VIRTIO_USB_VQ_REQUEST], sgs, out, in,
				 req, GFP_ATOMIC);
}

/*
 * Moves waiting requests to the requestq while it (and max_requests) has
 * room. Called with vu->lock held.
 */
static void vusb_backlog_flush(struct vusb *vu)
{
	struct vusb_req *req;
	bool added = false;

	while (!list_empty(&vu->backlog)) {
		if (vu->max_requests && vu->in_flight >= vu->max_requests)
			break;
		req = list_first_entry(&vu->backlog, struct vusb_req, node);
		if (vusb_req_add(vu, req))
			break;
		list_del(&req->node);
		req->queued = true;
		vu->in_flight++;
		added = true;
	}
	if (added)
		virtqueue_kick(vu->vqs[VIRTIO_USB_VQ_REQUEST]);
}

/*
 * Completes a local SET_ADDRESS: the device knows its devices by port, and
 * the root hub hands out addresses (spec 4).
 */
static int vusb_set_address(struct vusb *vu, struct usb_hcd *hcd,
			    struct urb *urb, unsigned int port)
{
	unsigned long flags;
	int ret;

	spin_lock_irqsave(&vu->lock, flags);
	ret = vusb_stopped(vu) ? -ESHUTDOWN : usb_hcd_link_urb_to_ep(hcd, urb);
	if (!ret) {
		usb_hcd_unlink_urb_from_ep(hcd, urb);
		if (vu->ports[port].speed && urb->dev->parent == hcd->self.root_hub)
			vu->ports[port].udev = urb->dev;
	}
	spin_unlock_irqrestore(&vu->lock, flags);
	if (!ret)
		usb_hcd_giveback_urb(hcd, urb, 0);
	return ret;
}

int vusb_urb_enqueue(struct usb_hcd *hcd, struct urb *urb, gfp_t mem_flags)
{
	struct vusb *vu = hcd_to_vusb(hcd);
	struct usb_ctrlrequest *setup;
	struct vusb_req *req;
	unsigned long flags;
	unsigned int port;
	int ret;

	port = vusb_urb_port(hcd, urb);
	if (!port)
		return -ENODEV;
	// The USB core only builds scatter-gather URBs up to the controller's
	// sg_tablesize, and never isochronous ones.
	if (urb->num_sgs > vu->max_segments ||
	    (urb->num_sgs && usb_pipeisoc(urb->pipe)) ||
	    (!urb->num_sgs && !urb->transfer_buffer &&
	     urb->transfer_buffer_length))
		return -EINVAL;
	if (urb->transfer_buffer_length > vu->max_transfer) {
		dev_err_ratelimited(&urb->dev->dev,
				    "%u-byte transfer exceeds the controller's limit of %u bytes\n",
				    urb->transfer_buffer_length, vu->max_transfer);
		return -EMSGSIZE;
	}
	if (usb_pipetype(urb->pipe) == PIPE_CONTROL) {
		setup = (struct usb_ctrlrequest *)urb->setup_packet;
		if (!setup)
			return -EINVAL;
		if (setup->bRequestType == (USB_DIR_OUT | USB_TYPE_STANDARD |
					    USB_RECIP_DEVICE) &&
		    setup->bRequest == USB_REQ_SET_ADDRESS)
			return vusb_set_address(vu, hcd, urb, port);
	}

	req = vusb_req_alloc(vu, hcd, urb, port, mem_flags);
	if (IS_ERR(req))
		return PTR_ERR(req);

	spin_lock_irqsave(&vu->lock, flags);
	if (vusb_stopped(vu)) {
		ret = -ESHUTDOWN;
		goto err_unlock;
	}
	if (!vusb_urb_is_current(&vu->ports[port], urb)) {
		ret = -ENODEV;
		goto err_unlock;
	}
	ret = usb_hcd_link_urb_to_ep(hcd, urb);
	if (ret)
		goto err_unlock;
	urb->hcpriv = req;
	req->hdr.id = cpu_to_le64(vu->next_id++);
	// Requests for one endpoint must reach the device in order, so
	// nothing overtakes the backlog.
	list_add_tail(&req->node, &vu->backlog);
	vusb_backlog_flush(vu);
	spin_unlock_irqrestore(&vu->lock, flags);
	return 0;

err_unlock:
	spin_unlock_irqrestore(&vu->lock, flags);
	vusb_req_free(req);
	return ret;
}

int vusb_urb_dequeue(struct usb_hcd *hcd, struct urb *urb, int status)
{
	struct vusb *vu = hcd_to_vusb(hcd);
	struct vusb_req *req;
	struct vusb_ctrl *c;
	unsigned long flags;
	int ret;

	spin_lock_irqsave(&vu->lock, flags);
	ret = usb_hcd_check_unlink_urb(hcd, urb, status);
	if (ret || vusb_stopped(vu)) {
		// Removal or the restart gives everything back.
		spin_unlock_irqrestore(&vu->lock, flags);
		return ret;
	}
	req = urb->hcpriv;
	if (!req->queued) {
		// Still in the backlog: the device never saw it.
		list_del(&req->node);
		usb_hcd_unlink_urb_from_ep(hcd, urb);
		vusb_req_put(req);
		spin_unlock_irqrestore(&vu->lock, flags);
		usb_hcd_giveback_urb(hcd, urb, status);
		return 0;
	}
	// The URB goes back when its request completes, cancelled or not;
	// the CANCEL keeps the request's memory until its own answer.
	if (!req->cancel_sent) {
		dev_dbg(&vu->vdev->dev, "port %u: cancelling request %llu\n",
			req->hdr.port, le64_to_cpu(req->hdr.id));
		req->cancel_sent = true;
		req->refs++;
		c = &req->cancel;
		c->owner = req;
		c->req.code = cpu_to_le32(VIRTIO_USB_CTRL_CANCEL);
		c->req.port = req->hdr.port;
		c->req.id = req->hdr.id;
		vusb_ctrl_submit(vu, c);
		vusb_cancel_sent(vu);
	}
	spin_unlock_irqrestore(&vu->lock, flags);
	return 0;
}

/*
 * Fills @req's URB from the device's answer, which is checked first: the
 * device is not trusted to stay within the request (spec 4.3).
 */
static int vusb_req_result(struct vusb_req *req, unsigned int used)
{
	struct urb *urb = req->urb;
	struct device *dev = &req->vu->vdev->dev;
	u32 len = le32_to_cpu(req->hdr.length);
	u32 npk = le32_to_cpu(req->hdr.num_iso_packets);
	bool is_in = req->hdr.endpoint & USB_DIR_IN;
	u32 actual = le32_to_cpu(req->resp.actual_length);
	size_t want = (is_in ? len : 0) + npk * sizeof(*req->iso_res) +
		      sizeof(req->resp);
	u64 sum = 0;
	u32 i, a;

	urb->actual_length = 0;
	if (used != want) {
		dev_warn_ratelimited(dev, "request %llu: device returned %u bytes, expected %zu\n",
				     le64_to_cpu(req->hdr.id), used, want);
		goto bad;
	}
	if (actual > len) {
		dev_warn_ratelimited(dev, "request %llu: %u bytes transferred of %u\n",
				     le64_to_cpu(req->hdr.id), actual, len);
		goto bad;
	}
	for (i = 0; i < npk; i++) {
		a = le32_to_cpu(req->iso_res[i].actual_length);
		if (a > le32_to_cpu(req->iso[i].length)) {
			dev_warn_ratelimited(dev, "request %llu: packet %u overflows\n",
					     le64_to_cpu(req->hdr.id), i);
			goto bad;
		}
		sum += a;
	}
	if (npk && sum != actual) {
		dev_warn_ratelimited(dev, "request %llu: packets add up to %llu, not %u\n",
				     le64_to_cpu(req->hdr.id), sum, actual);
		goto bad;
	}

	for (i = 0; i < npk; i++) {
		urb->iso_frame_desc[i].actual_length =
			le32_to_cpu(req->iso_res[i].actual_length);
		urb->iso_frame_desc[i].status =
			vusb_status_to_errno(le32_to_cpu(req->iso_res[i].status));
	}
	if (npk) {
		urb->error_count = le32_to_cpu(req->resp.error_count);
		urb->start_frame = le32_to_cpu(req->resp.start_frame);
	}
	urb->actual_length = actual;
	if (req->bounce && is_in)
		memcpy(urb->transfer_buffer, req->bounce, len);
	return vusb_status_to_errno(le32_to_cpu(req->resp.status));

bad:
	for (i = 0; i < npk; i++) {
		urb->iso_frame_desc[i].actual_length = 0;
		urb->iso_frame_desc[i].status = -EPROTO;
	}
	if (npk)
		urb->error_count = npk;
	return -EPROTO;
}

void vusb_request_done(struct virtqueue *vq)
{
	struct vusb *vu = vq->vdev->priv;
	struct vusb_req *req, *tmp;
	unsigned long flags;
	unsigned int used;
	LIST_HEAD(done);

	spin_lock_irqsave(&vu->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &used))) {
			vu->in_flight--;
			req->queued = false;
			req->status = vusb_req_result(req, used);
			if (req->cancel_sent)
				vusb_cancel_settled(vu);
			usb_hcd_unlink_urb_from_ep(req->hcd, req->urb);
			list_add_tail(&req->node, &done);
		}
	} while (!virtqueue_enable_cb(vq));
	vusb_backlog_flush(vu);
	spin_unlock_irqrestore(&vu->lock, flags);

	// Completion handlers may submit again, which takes vu->lock.
	list_for_each_entry_safe(req, tmp, &done, node) {
		struct usb_hcd *hcd = req->hcd;
		struct urb *urb = req->urb;
		int status = req->status;

		spin_lock_irqsave(&vu->lock, flags);
		list_del(&req->node);
		vusb_req_put(req);
		spin_unlock_irqrestore(&vu->lock, flags);
		usb_hcd_giveback_urb(hcd, urb, status);
	}
}

/*
 * Gives back every URB with -ESHUTDOWN and frees everything the virtqueues
 * held. Only after the device was reset (spec 7): it no longer touches any
 * buffer.
 */
void vusb_giveback_all(struct vusb *vu)
{
	struct vusb_req *req, *tmp;
	struct vusb_ctrl *c, *ctmp;
	unsigned int n = 0;
	LIST_HEAD(done);

	spin_lock_irq(&vu->lock);
	while ((req = virtqueue_detach_unused_buf(vu->vqs[VIRTIO_USB_VQ_REQUEST]))) {
		req->queued = false;
		list_add_tail(&req->node, &done);
	}
	vu->in_flight = 0;
	list_splice_tail_init(&vu->backlog, &done);
	list_for_each_entry(req, &done, node) {
		usb_hcd_unlink_urb_from_ep(req->hcd, req->urb);
		n++;
	}

	while ((c = virtqueue_detach_unused_buf(vu->vqs[VIRTIO_USB_VQ_CONTROL])))
		vusb_ctrl_release(c);
	list_for_each_entry_safe(c, ctmp, &vu->ctrl_pending, node) {
		list_del(&c->node);
		vusb_ctrl_release(c);
	}
	while (virtqueue_detach_unused_buf(vu->vqs[VIRTIO_USB_VQ_EVENT]))
		;
	spin_unlock_irq(&vu->lock);
	dev_dbg(&vu->vdev->dev, "giving back %u transfers on removal\n", n);

	list_for_each_entry_safe(req, tmp, &done, node) {
		struct usb_hcd *hcd = req->hcd;
		struct urb *urb = req->urb;

		spin_lock_irq(&vu->lock);
		list_del(&req->node);
		vusb_req_put(req);
		spin_unlock_irq(&vu->lock);
		usb_hcd_giveback_urb(hcd, urb, -ESHUTDOWN);
	}
}
