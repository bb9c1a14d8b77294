FROM python:3.11-slim

# Pango and fonts for the PDF reports (WeasyPrint), poppler-utils to read them back in tests.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VAR_DIR=/app/var
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
RUN DEBUG=0 SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && useradd --system --home /app skinsite \
    && mkdir -p /app/var/media \
    && chown -R skinsite /app/var

USER skinsite
EXPOSE 8000
CMD ["gunicorn", "skinsite.wsgi", "--bind", "0.0.0.0:8000"]
