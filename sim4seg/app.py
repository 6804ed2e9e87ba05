"""``sim4seg app``: a Gradio web app on the one inference path (:class:`sim4seg.inference.Predictor`).

Upload a picture (PNG, JPEG, TIFF, 16-bit PNG, DICOM, NIfTI), pick or type a question, optionally set test-time
scaling (m paths, n masks, a deployable selection), and see the answer (the chain of thought folded), the mask
over the image, the RVLS2M region, SAM's predicted IoU, and the mask PNG to download. Bad input is one message in
the page (``gr.Error``); the app keeps serving. The same function is Gradio's API endpoint ``/answer``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    answer_md, overlay, region, sam_iou, mask_png = client.predict(
        image=handle_file("scan.dcm"), question="Where is the lesion? What is the diagnosis?", api_name="/answer")
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sim4seg.data.readers import ReadOptions
from sim4seg.data.readers.window import WINDOW_CHOICES
from sim4seg.errors import UserError
from sim4seg.inputs import DEPLOYABLE, MAX_TTS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a clinic's machine

DEMO_RUN = Path("runs/demo")
AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
# Example questions per modality, in the wording of the training queries (sim4seg.data.prompts).
QUESTIONS = (
    "Please segment the tumor in this breast ultrasound image. Is it benign or malignant?",
    "Where is the fracture in this X-ray image? Please output the segmentation mask.",
    "Could you help me identify the skin lesion in the dermoscopic image? What is the diagnosis?",
    "Please segment the polyp in this colon endoscopy image.",
    "Please segment the retinal vessels in this fundus image. What is the diagnosis?",
    "Where is the lesion in this CT slice? Please output the segmentation mask.",
    "Where is the lesion in this MRI slice? What is the diagnosis?",
)


def answer_markdown(answer: str, diagnosis: str, flags: list[str]) -> str:
    """The diagnosis first ("no finding" when the answer gives no mask), the whole answer (chain of thought)
    folded below it."""
    short = diagnosis if len(diagnosis) <= 200 else diagnosis[:200] + " ..."
    lines = [f"**Diagnosis:** {short or '(none stated)'}"]
    if "no_finding" in flags:
        lines.append("**No finding:** the answer marks no region (no mask)")
    if flags:
        lines.append(f"*flags: {', '.join(flags)}*")
    lines.append(f"<details><summary>Full answer</summary>\n\n{answer}\n\n</details>")
    return "\n\n".join(lines)


def respond(predictor, image: str | Path, question: str, options: ReadOptions, m: int = 1, n: int = 1,
            select: str = DEPLOYABLE[0], out_dir: Path | None = None, logits_processor=None) -> tuple[tuple, object]:
    """One request of the app: read, predict, draw. -> ((answer markdown, overlay RGB [H, W, 3], region overlay
    or None, SAM IoU text, mask PNG path), the :class:`~sim4seg.inference.Prediction` with ``timings`` of
    reading, sam_encoder, generation, decoding and output). ``logits_processor``: a benchmark's fixed answer."""
    from sim4seg.inference import overlay, write_mask_png

    picture, pred = predictor.predict_file(image, question, options, m=m, n=n, select=select,
                                           logits_processor=logits_processor)
    t0 = time.perf_counter()
    mask_png = Path(out_dir or tempfile.mkdtemp(prefix="sim4seg-app-")) / f"{Path(image).name.split('.')[0]}_mask.png"
    write_mask_png(mask_png, pred.mask)
    region = overlay(picture, np.zeros_like(pred.mask), pred.region) if pred.region is not None else None
    iou = "no mask (no finding: [SEG] not generated)" if pred.sam_iou is None else f"{pred.sam_iou:.3f}"
    outputs = (answer_markdown(pred.answer, pred.diagnosis, pred.flags), overlay(picture, pred.mask, pred.region),
               region, iou, str(mask_png))
    pred.timings["output"] = time.perf_counter() - t0
    return outputs, pred


def build_app(predictor):
    """The Gradio Blocks of the app around ``predictor`` (a :class:`~sim4seg.inference.Predictor`)."""
    import gradio as gr

    from sim4seg.data.io import load_image
    from sim4seg.data.schema import RecordError

    out_dir = Path(tempfile.mkdtemp(prefix="sim4seg-app-"))

    def options(frame, axis, nifti_slice, window) -> ReadOptions:
        index = int(nifti_slice if nifti_slice is not None else -1)
        return ReadOptions(frame=int(frame or 0), axis=AXES[axis], slice=None if index < 0 else index,
                           window=window or "auto")

    def refuse(e: Exception, image: str | None) -> gr.Error:
        """One message in the page, naming the uploaded file by its own name (not Gradio's cache path)."""
        msg = str(e).replace(str(image), Path(image).name) if image else str(e)
        return gr.Error(msg, print_exception=False)

    def preview(image, frame, axis, nifti_slice, window):
        if not image:
            return None
        try:
            return load_image(image, predictor.max_pixels, options(frame, axis, nifti_slice, window))
        except (UserError, RecordError) as e:
            raise refuse(e, image) from None

    def answer(image, question, m, n, select, frame, axis, nifti_slice, window):
        if not image:
            raise gr.Error("upload an image first", print_exception=False)
        try:
            outputs, _ = respond(predictor, image, question, options(frame, axis, nifti_slice, window), int(m),
                                 int(n), select, Path(tempfile.mkdtemp(dir=out_dir)))
        except UserError as e:
            raise refuse(e, image) from None
        return outputs

    with gr.Blocks(title="Sim4Seg") as demo:
        gr.Markdown(f"## Sim4Seg: diagnosis and segmentation\nModel: `{predictor.name}`. Research use only; not a "
                    "medical device.")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Image: PNG, JPEG, TIFF, 16-bit PNG, DICOM, NIfTI", type="filepath",
                                elem_id="image")
                shown = gr.Image(label="As read", interactive=False, format="png", height=260)
                question = gr.Dropdown(list(QUESTIONS), value=QUESTIONS[0], allow_custom_value=True,
                                       label="Question (pick one or type your own)", elem_id="question")
                with gr.Accordion("DICOM / NIfTI / multi-page", open=False):
                    frame = gr.Number(0, precision=0, minimum=0, label="Frame (DICOM) / page / volume (4-D NIfTI)")
                    axis = gr.Radio(list(AXES), value="axial", label="NIfTI plane")
                    nifti_slice = gr.Number(-1, precision=0, minimum=-1, label="NIfTI slice (-1: the middle)")
                    window = gr.Dropdown(list(WINDOW_CHOICES), value="auto", allow_custom_value=True,
                                         label="Window (or CENTER,WIDTH)")
                with gr.Accordion("Test-time scaling", open=False):
                    m = gr.Slider(1, MAX_TTS, value=1, step=1, label="m: answer paths (1 = greedy)")
                    n = gr.Slider(1, MAX_TTS, value=1, step=1, label="n: region masks per path")
                    select = gr.Radio(list(DEPLOYABLE), value=DEPLOYABLE[0], label="Mask selection")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer_md = gr.Markdown(label="Answer", elem_id="answer")
                shown_mask = gr.Image(label="Mask over the image", format="png", height=320, elem_id="overlay")
                region = gr.Image(label="RVLS2M region", format="png", height=320, elem_id="region")
                sam_iou = gr.Textbox(label="SAM predicted IoU", elem_id="sam-iou")
                mask_file = gr.File(label="Mask PNG", elem_id="mask-file")
        image.upload(preview, [image, frame, axis, nifti_slice, window], shown, api_name="preview")
        ask.click(answer, [image, question, m, n, select, frame, axis, nifti_slice, window],
                  [answer_md, shown_mask, region, sam_iou, mask_file], api_name="answer")
    return demo


def resolve_ckpt(ckpt: str | Path | None) -> Path:
    if ckpt is not None:
        return Path(ckpt)
    if DEMO_RUN.is_dir():
        return DEMO_RUN
    raise UserError(f"no --ckpt given and {DEMO_RUN} does not exist: train the demo model with scripts/demo.sh, or "
                    "pass --ckpt RUN_DIR")


def serve(ckpt: str | Path | None, host: str = "127.0.0.1", port: int = 7860, max_new_tokens: int | None = None) -> int:
    """Load the model, then serve the app until Ctrl-C."""
    from sim4seg import deps

    run = resolve_ckpt(ckpt)
    deps.require(deps.APP, "sim4seg app")
    from sim4seg.inference import Predictor

    demo = build_app(Predictor.from_run(run, max_new_tokens))
    try:
        demo.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, ssr_mode=False,
                                                        show_error=True, footer_links=["api"])
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e}); pass another --port") from None
    return 0
