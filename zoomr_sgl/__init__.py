"""zoomr-sgl: ZoomR for SGLang. Summaries stay on the device, thought detail goes to host memory, and decode
zooms in on the thoughts that matter. See README.md and ../shared/design/ZOOMR.md."""
