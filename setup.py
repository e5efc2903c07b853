"""The optional C extensions (everything else is in pyproject.toml): the stack walker,
the query timer and the idle-socket check.

optional=True: without a compiler (or, for the stack walker, on Python 3.10) the build
goes on without them, and django_pooled_pg.pool.stacks, .tracker and .record use their
Python versions (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "django_pooled_pg.pool._stackwalk",
            ["django_pooled_pg/pool/_stackwalk.c"],
            optional=True,
        ),
        Extension(
            "django_pooled_pg.pool._querytimer",
            ["django_pooled_pg/pool/_querytimer.c"],
            optional=True,
        ),
        Extension(
            "django_pooled_pg.pool._pollnow",
            ["django_pooled_pg/pool/_pollnow.c"],
            optional=True,
        ),
    ]
)
