"""A gunicorn ``--preload`` target for tests: the master process uses the database (and keeps
its lease: no request ends in the master) before it forks its workers."""

import os

from django.db import connection
from testproject.wsgi import application  # noqa: F401 (what gunicorn serves)

with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid() /* the master's query */")
    (MASTER_BACKEND_PID,) = cursor.fetchone()

with open(os.environ["PRELOAD_REPORT"], "w") as report:
    report.write(str(MASTER_BACKEND_PID))
