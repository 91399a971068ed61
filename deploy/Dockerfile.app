# The application image: the pipeline package, the CLI and the Streamlit UI. No torch: export runs elsewhere.
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
RUN pip install --no-cache-dir --no-deps . && useradd --create-home app
USER app
EXPOSE 8501
CMD ["streamlit", "run", "ui/app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
