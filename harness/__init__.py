"""fp4check: validate NVFP4 inference kernels for DeepSeek-V4-class MoE models.

The package maps the top-level folders of DESIGN.md §2 to import names:
harness/ -> fp4check, kernels/ -> fp4check.kernels, references/ -> fp4check.references,
reports/ -> fp4check.reports.
"""

__version__ = "0.1.0"
