// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-usb host controller: probe and removal, the virtqueues, and the
 * controlq and eventq paths.
 *
 * The device (docs/virtio-usb.md) carries USB transfers to devices behind
 * its root-hub ports; this driver presents it to the USB core as one USB 2.0
 * root hub and, when the device has USB 3 ports, a shared USB 3 root hub,
 * the way vhci-hcd presents USB/IP devices.
 */

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/virtio_config.h>

#include "virtio_usb.h"

static unsigned int virtio_id = VIRTIO_ID_USB_DEFAULT;
module_param(virtio_id, uint, 0444);
MODULE_PARM_DESC(virtio_id, "virtio device ID of the virtio-usb device (default 21)");

/*
 * Queues a controlq request, or keeps it until the controlq has room: a
 * CANCEL must never be lost because the queue was momentarily full.
 * Called with vu->lock held.
 */
void vusb_ctrl_submit(struct vusb *vu, struct vusb_ctrl *ctrl)
{
	struct virtqueue *vq = vu->vqs[VIRTIO_USB_VQ_CONTROL];
	struct scatterlist out, in, *sgs[2];

	lockdep_assert_held(&vu->lock);
	if (list_empty(&vu->ctrl_pending)) {
		sg_init_one(&out, &ctrl->req, sizeof(ctrl->req));
		sg_init_one(&in, &ctrl->resp, sizeof(ctrl->resp));
		sgs[0] = &out;
		sgs[1] = &in;
		if (!virtqueue_add_sgs(vq, sgs, 1, 1, ctrl, GFP_ATOMIC)) {
			virtqueue_kick(vq);
			return;
		}
	}
	list_add_tail(&ctrl->node, &vu->ctrl_pending);
}

static void vusb_ctrl_flush_pending(struct vusb *vu)
{
	struct vusb_ctrl *ctrl;
	LIST_HEAD(pending);

	list_splice_init(&vu->ctrl_pending, &pending);
	while (!list_empty(&pending)) {
		ctrl = list_first_entry(&pending, struct vusb_ctrl, node);
		list_del(&ctrl->node);
		vusb_ctrl_submit(vu, ctrl);
	}
}

/*
 * A controlq request is done with: CANCELs belong to their transfer.
 * Called with vu->lock held.
 */
void vusb_ctrl_release(struct vusb_ctrl *ctrl)
{
	if (ctrl->owner)
		vusb_req_put(ctrl->owner);
	else
		kfree(ctrl);
}

/*
 * A CANCEL went out. The watch resets a device that never gives the
 * cancelled request back, whatever it answered to the CANCEL: the URB, and
 * whoever waits on it (usb-core's hub thread, usb-storage's error
 * handling), would wait forever. Called with vu->lock held.
 */
void vusb_cancel_sent(struct vusb *vu)
{
	if (!vu->cancels_out++)
		vu->cancel_progress = jiffies;
	schedule_delayed_work(&vu->cancel_watch, VUSB_CANCEL_CHECK);
}

/* A cancelled request came back. Called with vu->lock held. */
void vusb_cancel_settled(struct vusb *vu)
{
	if (vu->cancels_out) {
		vu->cancels_out--;
		vu->cancel_progress = jiffies;
	}
}

static void vusb_cancel_watch(struct work_struct *work)
{
	struct vusb *vu = container_of(to_delayed_work(work), struct vusb,
				       cancel_watch);
	unsigned int out;
	bool stuck;

	spin_lock_irq(&vu->lock);
	out = vu->cancels_out;
	stuck = time_after(jiffies, vu->cancel_progress + VUSB_CANCEL_TIMEOUT);
	if (vusb_stopped(vu) || !out) {
		spin_unlock_irq(&vu->lock);
		return;
	}
	spin_unlock_irq(&vu->lock);
	if (stuck) {
		dev_err(&vu->vdev->dev,
			"%u cancelled transfers unanswered for %u s: resetting the device\n",
			out, VUSB_CANCEL_TIMEOUT / HZ);
		schedule_work(&vu->restart_work);
	} else {
		schedule_delayed_work(&vu->cancel_watch, VUSB_CANCEL_CHECK);
	}
}

static int vusb_event_add(struct vusb *vu, struct virtio_usb_event *evt)
{
	struct scatterlist sg;

	sg_init_one(&sg, evt, sizeof(*evt));
	return virtqueue_add_inbuf(vu->vqs[VIRTIO_USB_VQ_EVENT], &sg, 1, evt,
				   GFP_ATOMIC);
}

/*
 * Port resets and events change root-hub port state, which the hub driver
 * reads back through hub_control; process context keeps that simple.
 */
static void vusb_ctrl_work(struct work_struct *work)
{
	struct vusb *vu = container_of(work, struct vusb, ctrl_work);
	struct virtqueue *cvq = vu->vqs[VIRTIO_USB_VQ_CONTROL];
	struct virtqueue *evq = vu->vqs[VIRTIO_USB_VQ_EVENT];
	struct virtio_usb_event *evt, copy;
	struct vusb_ctrl *ctrl;
	bool refilled = false;
	unsigned int len;

	spin_lock_irq(&vu->lock);
	if (vusb_stopped(vu)) {
		spin_unlock_irq(&vu->lock);
		return;
	}
	while ((ctrl = virtqueue_get_buf(cvq, &len))) {
		if (len < sizeof(ctrl->resp)) {
			dev_warn_ratelimited(&vu->vdev->dev,
					     "control response of %u bytes, expected %zu\n",
					     len, sizeof(ctrl->resp));
			ctrl->resp.status = cpu_to_le32(VIRTIO_USB_S_PROTOCOL);
		}
		if (!ctrl->owner)
			vusb_port_reset_done(vu, ctrl);
		vusb_ctrl_release(ctrl);
	}
	vusb_ctrl_flush_pending(vu);

	while ((evt = virtqueue_get_buf(evq, &len))) {
		// Copy first: the buffer goes straight back to the device.
		copy = *evt;
		if (len < sizeof(*evt))
			dev_warn_ratelimited(&vu->vdev->dev,
					     "event of %u bytes, expected %zu\n",
					     len, sizeof(*evt));
		else
			vusb_port_event(vu, &copy);
		memset(evt, 0, sizeof(*evt));
		if (vusb_event_add(vu, evt))
			dev_warn_ratelimited(&vu->vdev->dev,
					     "cannot requeue an event buffer\n");
		refilled = true;
	}
	if (refilled)
		virtqueue_kick(evq);
	spin_unlock_irq(&vu->lock);

	usb_hcd_poll_rh_status(vu->hcd2);
	if (vu->hcd3)
		usb_hcd_poll_rh_status(vu->hcd3);
}

static void vusb_ctrl_done(struct virtqueue *vq)
{
	struct vusb *vu = vq->vdev->priv;

	schedule_work(&vu->ctrl_work);
}

static int vusb_hcd_setup(struct usb_hcd *hcd)
{
	if (usb_hcd_is_primary_hcd(hcd)) {
		hcd->speed = HCD_USB2;
		hcd->self.root_hub->speed = USB_SPEED_HIGH;
		// Full- and low-speed devices sit right on this high-speed
		// hub; the hub driver wants a transaction translator for
		// them, which the device side makes unnecessary.
		hcd->has_tt = 1;
	} else {
		hcd->speed = HCD_USB3;
		hcd->self.root_hub->speed = USB_SPEED_SUPER;
	}
	return 0;
}

static int vusb_hcd_start(struct usb_hcd *hcd)
{
	hcd->power_budget = 0;
	hcd->state = HC_STATE_RUNNING;
	hcd->uses_new_polling = 1;
	return 0;
}

static void vusb_hcd_stop(struct usb_hcd *hcd)
{
}

static int vusb_get_frame_number(struct usb_hcd *hcd)
{
	// There is no bus here; a millisecond count serves as frame number.
	return (ktime_get_ns() / NSEC_PER_MSEC) & 0x7ff;
}

static int vusb_bus_suspend(struct usb_hcd *hcd)
{
	struct vusb *vu = hcd_to_vusb(hcd);

	spin_lock_irq(&vu->lock);
	hcd->state = HC_STATE_SUSPENDED;
	spin_unlock_irq(&vu->lock);
	return 0;
}

static int vusb_bus_resume(struct usb_hcd *hcd)
{
	struct vusb *vu = hcd_to_vusb(hcd);

	if (!HCD_HW_ACCESSIBLE(hcd))
		return -ESHUTDOWN;
	spin_lock_irq(&vu->lock);
	hcd->state = HC_STATE_RUNNING;
	spin_unlock_irq(&vu->lock);
	return 0;
}

static const struct hc_driver vusb_hc_driver = {
	.description = "virtio_usb_hcd",
	.product_desc = "virtio-usb host controller",
	.hcd_priv_size = sizeof(struct vusb_rh),
	.flags = HCD_USB3 | HCD_SHARED,
	.reset = vusb_hcd_setup,
	.start = vusb_hcd_start,
	.stop = vusb_hcd_stop,
	.urb_enqueue = vusb_urb_enqueue,
	.urb_dequeue = vusb_urb_dequeue,
	.get_frame_number = vusb_get_frame_number,
	.hub_status_data = vusb_hub_status_data,
	.hub_control = vusb_hub_control,
	.bus_suspend = vusb_bus_suspend,
	.bus_resume = vusb_bus_resume,
};

static int vusb_init_vqs(struct vusb *vu)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	struct virtqueue_info info[VIRTIO_USB_NUM_VQS] = {
		{ "request", vusb_request_done },
		{ "control", vusb_ctrl_done },
		{ "event", vusb_ctrl_done },
	};

	return virtio_find_vqs(vu->vdev, VIRTIO_USB_NUM_VQS, vu->vqs, info,
			       NULL);
#else
	vq_callback_t *callbacks[VIRTIO_USB_NUM_VQS] = {
		vusb_request_done, vusb_ctrl_done, vusb_ctrl_done
	};
	static const char * const names[VIRTIO_USB_NUM_VQS] = {
		"request", "control", "event"
	};

	return virtio_find_vqs(vu->vdev, VIRTIO_USB_NUM_VQS, vu->vqs,
			       callbacks, names, NULL);
#endif
}

/* Reads and checks the configuration space (spec 2); 0 if usable. */
static int vusb_read_config(struct vusb *vu)
{
	struct virtio_device *vdev = vu->vdev;
	struct virtio_usb_config cfg;
	u16 major, minor;

	if (!virtio_has_feature(vdev, VIRTIO_F_VERSION_1)) {
		dev_err(&vdev->dev, "device does not offer VIRTIO_F_VERSION_1\n");
		return -ENODEV;
	}
	virtio_cread_bytes(vdev, 0, &cfg, sizeof(cfg));
	major = le16_to_cpu(cfg.version_major);
	minor = le16_to_cpu(cfg.version_minor);
	if (memcmp(cfg.magic, VIRTIO_USB_MAGIC, sizeof(cfg.magic))) {
		dev_err(&vdev->dev, "not a virtio-usb device: magic %*phN, expected \"%s\"\n",
			(int)sizeof(cfg.magic), cfg.magic, VIRTIO_USB_MAGIC);
		return -ENODEV;
	}
	if (major != VIRTIO_USB_VERSION_MAJOR) {
		dev_err(&vdev->dev, "virtio-usb version %u.%u, this driver speaks %u.x\n",
			major, minor, VIRTIO_USB_VERSION_MAJOR);
		return -ENODEV;
	}
	if (cfg.usb2_ports > VIRTIO_USB_MAX_PORTS ||
	    cfg.usb3_ports > VIRTIO_USB_MAX_PORTS ||
	    (!cfg.usb2_ports && !cfg.usb3_ports)) {
		dev_err(&vdev->dev, "bad port counts: %u USB 2.0, %u USB 3\n",
			cfg.usb2_ports, cfg.usb3_ports);
		return -ENODEV;
	}
	vu->usb2_ports = cfg.usb2_ports;
	vu->usb3_ports = virtio_has_feature(vdev, VIRTIO_USB_F_USB3) ?
			 cfg.usb3_ports : 0;
	if (!vu->usb2_ports && !vu->usb3_ports) {
		dev_err(&vdev->dev, "only USB 3 ports, but no VIRTIO_USB_F_USB3\n");
		return -ENODEV;
	}
	vu->max_requests = le16_to_cpu(cfg.max_requests);
	vu->max_transfer = le32_to_cpu(cfg.max_transfer);
	vu->max_iso_packets = virtio_has_feature(vdev, VIRTIO_USB_F_ISO) ?
			      le16_to_cpu(cfg.max_iso_packets) : 0;
	return 0;
}

/*
 * Scatter-gather lets a class driver hand over a whole transfer in one URB;
 * without it the USB core submits one URB, and so one request and one trip
 * to the device, per segment: a page, for usb-storage. A chain may not be
 * longer than the ring, and the header and the response take two entries.
 */
static unsigned int vusb_max_segments(struct vusb *vu)
{
	struct virtqueue *vq = vu->vqs[VIRTIO_USB_VQ_REQUEST];
	unsigned int ring = virtqueue_get_vring_size(vq);

	if (vu->max_transfer < VUSB_SG_MIN_TRANSFER || ring <= 2)
		return 0;
	return ring - 2;
}

static struct usb_hcd *vusb_add_hcd(struct vusb *vu, struct usb_hcd *primary,
				    u8 first_port, u8 nports)
{
	struct device *dev = &vu->vdev->dev;
	struct usb_hcd *hcd;
	struct vusb_rh *rh;
	int err;

	if (primary)
		hcd = usb_create_shared_hcd(&vusb_hc_driver, dev, dev_name(dev),
					    primary);
	else
		hcd = usb_create_hcd(&vusb_hc_driver, dev, dev_name(dev));
	if (!hcd)
		return ERR_PTR(-ENOMEM);
	rh = hcd_to_rh(hcd);
	rh->vu = vu;
	rh->first_port = first_port;
	rh->nports = nports;
	if (vu->max_segments) {
		hcd->self.sg_tablesize = vu->max_segments;
		// The device does not care where segments end (spec 3).
		hcd->self.no_sg_constraint = 1;
	}
	err = usb_add_hcd(hcd, 0, 0);
	if (err) {
		usb_put_hcd(hcd);
		return ERR_PTR(err);
	}
	return hcd;
}

/* Gives the device its event buffers. Called with vu->lock held. */
static int vusb_events_stock(struct vusb *vu)
{
	unsigned int i;
	int err = 0;

	for (i = 0; i < VUSB_EVENT_BUFS; i++) {
		memset(&vu->events[i], 0, sizeof(vu->events[i]));
		err = vusb_event_add(vu, &vu->events[i]);
		if (err)
			break;
	}
	virtqueue_kick(vu->vqs[VIRTIO_USB_VQ_EVENT]);
	return i ? 0 : err;
}

/*
 * The device lost its state or stopped answering (spec 7.1): reset it,
 * give every URB back, empty the ports and set the device up again. Its
 * devices then come back as new ones.
 */
/*
 * A reset device has forgotten the features it was given: without them
 * again it would run the rings without EVENT_IDX while this side still
 * relies on it, and stop hearing kicks after the first. This is the
 * status sequence the virtio core runs at probe time.
 */
static int vusb_renegotiate(struct virtio_device *vdev)
{
	int err;

	virtio_add_status(vdev, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	virtio_add_status(vdev, VIRTIO_CONFIG_S_DRIVER);
	err = vdev->config->finalize_features(vdev);
	if (err)
		return err;
	if (!virtio_has_feature(vdev, VIRTIO_F_VERSION_1))
		return 0;
	virtio_add_status(vdev, VIRTIO_CONFIG_S_FEATURES_OK);
	if (!(vdev->config->get_status(vdev) & VIRTIO_CONFIG_S_FEATURES_OK))
		return -ENODEV;
	return 0;
}

static void vusb_restart_work(struct work_struct *work)
{
	struct vusb *vu = container_of(work, struct vusb, restart_work);
	struct virtio_device *vdev = vu->vdev;
	int err;

	spin_lock_irq(&vu->lock);
	if (vu->dying || vu->vqs_gone) {
		spin_unlock_irq(&vu->lock);
		return;
	}
	vu->restarting = true;
	spin_unlock_irq(&vu->lock);

	virtio_reset_device(vdev);
	cancel_work_sync(&vu->ctrl_work);
	cancel_delayed_work_sync(&vu->cancel_watch);
	vusb_giveback_all(vu);
	spin_lock_irq(&vu->lock);
	vu->cancels_out = 0;
	vusb_ports_empty(vu);
	spin_unlock_irq(&vu->lock);
	vdev->config->del_vqs(vdev);

	err = vusb_renegotiate(vdev);
	if (!err)
		err = vusb_init_vqs(vu);
	if (!err) {
		virtio_device_ready(vdev);
		spin_lock_irq(&vu->lock);
		vu->restarting = false;
		err = vusb_events_stock(vu);
		spin_unlock_irq(&vu->lock);
	} else {
		vu->vqs_gone = true;
	}
	if (err)
		dev_err(&vdev->dev, "cannot set the device up again: %d\n", err);
	else
		dev_info(&vdev->dev, "device reset; its devices come back as new ones\n");
	usb_hcd_poll_rh_status(vu->hcd2);
	if (vu->hcd3)
		usb_hcd_poll_rh_status(vu->hcd3);
}

/*
 * Marks the controller dying, lets a restart under way finish (none starts
 * after this), stops the watchdog and resets the device, so that it
 * touches no buffer any more and raises no further interrupt work.
 */
static void vusb_stop_device(struct vusb *vu)
{
	spin_lock_irq(&vu->lock);
	vu->dying = true;
	spin_unlock_irq(&vu->lock);
	cancel_work_sync(&vu->restart_work);
	cancel_delayed_work_sync(&vu->cancel_watch);
	virtio_reset_device(vu->vdev);
	cancel_work_sync(&vu->ctrl_work);
}

static int vusb_probe(struct virtio_device *vdev)
{
	struct vusb *vu;
	int err;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "transport cannot read the configuration space\n");
		return -EINVAL;
	}
	vu = kzalloc(sizeof(*vu), GFP_KERNEL);
	if (!vu)
		return -ENOMEM;
	vu->vdev = vdev;
	vdev->priv = vu;
	spin_lock_init(&vu->lock);
	INIT_LIST_HEAD(&vu->backlog);
	INIT_LIST_HEAD(&vu->ctrl_pending);
	INIT_WORK(&vu->ctrl_work, vusb_ctrl_work);
	INIT_WORK(&vu->restart_work, vusb_restart_work);
	INIT_DELAYED_WORK(&vu->cancel_watch, vusb_cancel_watch);
	vu->next_id = 1;

	err = vusb_read_config(vu);
	if (err)
		goto err_free;
	vu->events = kcalloc(VUSB_EVENT_BUFS, sizeof(*vu->events), GFP_KERNEL);
	if (!vu->events) {
		err = -ENOMEM;
		goto err_free;
	}
	err = vusb_init_vqs(vu);
	if (err)
		goto err_free_events;
	vu->max_segments = vusb_max_segments(vu);

	vu->hcd2 = vusb_add_hcd(vu, NULL, 1, vu->usb2_ports);
	if (IS_ERR(vu->hcd2)) {
		err = PTR_ERR(vu->hcd2);
		goto err_del_vqs;
	}
	if (vu->usb3_ports) {
		vu->hcd3 = vusb_add_hcd(vu, vu->hcd2, vu->usb2_ports + 1,
					vu->usb3_ports);
		if (IS_ERR(vu->hcd3)) {
			err = PTR_ERR(vu->hcd3);
			vu->hcd3 = NULL;
			goto err_remove_hcd2;
		}
	}

	// The device announces its ports once the driver is ready (spec 6).
	virtio_device_ready(vdev);
	spin_lock_irq(&vu->lock);
	err = vusb_events_stock(vu);
	spin_unlock_irq(&vu->lock);
	if (err) {
		dev_err(&vdev->dev, "cannot queue event buffers: %d\n", err);
		goto err_reset;
	}

	dev_info(&vdev->dev, "virtio-usb: %u USB 2.0 and %u USB 3 ports, %u-byte transfers, %u segments%s\n",
		 vu->usb2_ports, vu->usb3_ports, vu->max_transfer,
		 vu->max_segments, vu->max_iso_packets ? ", isochronous" : "");
	return 0;

err_reset:
	vusb_stop_device(vu);
	if (vu->hcd3) {
		usb_remove_hcd(vu->hcd3);
		usb_put_hcd(vu->hcd3);
	}
err_remove_hcd2:
	usb_remove_hcd(vu->hcd2);
	usb_put_hcd(vu->hcd2);
err_del_vqs:
	vdev->config->del_vqs(vdev);
err_free_events:
	kfree(vu->events);
err_free:
	kfree(vu);
	return err;
}

/*
 * Nothing here waits for the device: it is reset first, so that a device
 * that stopped answering cannot hold up removal, and everything it still
 * held is given back before the root hubs go away.
 */
static void vusb_remove(struct virtio_device *vdev)
{
	struct vusb *vu = vdev->priv;

	vusb_stop_device(vu);
	if (!vu->vqs_gone)
		vusb_giveback_all(vu);

	if (vu->hcd3)
		usb_remove_hcd(vu->hcd3);
	usb_remove_hcd(vu->hcd2);
	if (vu->hcd3)
		usb_put_hcd(vu->hcd3);
	usb_put_hcd(vu->hcd2);

	if (!vu->vqs_gone)
		vdev->config->del_vqs(vdev);
	kfree(vu->events);
	kfree(vu);
}

static struct virtio_device_id vusb_id_table[] = {
	{ VIRTIO_ID_USB_DEFAULT, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vusb_id_table);

static unsigned int vusb_features[] = {
	VIRTIO_USB_F_ISO,
	VIRTIO_USB_F_USB3,
};

static struct virtio_driver vusb_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = vusb_id_table,
	.feature_table = vusb_features,
	.feature_table_size = ARRAY_SIZE(vusb_features),
	.probe = vusb_probe,
	.remove = vusb_remove,
};

static int __init vusb_init(void)
{
	if (!virtio_id || virtio_id == VIRTIO_DEV_ANY_ID) {
		pr_err("virtio_usb_hcd: virtio_id=%u is not a device ID\n",
		       virtio_id);
		return -EINVAL;
	}
	// The ID is a parameter (spec 1.1); the table is read at bind time.
	vusb_id_table[0].device = virtio_id;
	return register_virtio_driver(&vusb_driver);
}

static void __exit vusb_exit(void)
{
	unregister_virtio_driver(&vusb_driver);
}

module_init(vusb_init);
module_exit(vusb_exit);

MODULE_DESCRIPTION("virtio-usb host controller driver");
MODULE_LICENSE("GPL");
