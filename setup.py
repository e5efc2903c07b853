"""The optional C stack walker (everything else is in pyproject.toml).

optional=True: without a compiler or on Python 3.10, the build goes on without it and
django_pooled_pg.pool.stacks uses its Python walk (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "django_pooled_pg.pool._stackwalk",
            ["django_pooled_pg/pool/_stackwalk.c"],
            optional=True,
        )
    ]
)
