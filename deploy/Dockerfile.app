# The application image, for the HTTP service (`python -m pipeline serve`, port 8000; the compose `api`
# service overrides the command), the job worker (`python -m pipeline worker`, the compose `worker` service)
# and the Streamlit page (the default command, port 8501), plus the CLI.
# No torch: export runs elsewhere.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt ./
# Serving needs no torch/transformers/onnx tooling: drop the export-only lines.
RUN grep -vE '^(torch|transformers|onnx|onnxscript|onnxconverter-common)==' requirements.txt > serve.txt \
    && pip install --no-cache-dir -r serve.txt
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY ui ./ui
COPY .streamlit ./.streamlit
# /data: the service's own files (uploaded images) on a volume; created here so the volume is the app user's.
RUN pip install --no-cache-dir --no-deps . && useradd --create-home --uid 1000 app \
    && mkdir -p /data && chown app:app /data
USER app
EXPOSE 8000 8501
CMD ["streamlit", "run", "ui/app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
