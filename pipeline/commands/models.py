import click
from rich.table import Table

from pipeline.commands.options import EdgepipeCommand, emit, json_option
from pipeline.progress import out


@click.command("models", cls=EdgepipeCommand)
@click.option("--img-size", default=32, help="Input size for the MAC count.")
@click.option("--in-chans", default=1, help="Input channels for the MAC count.")
@json_option
def models_command(img_size: int, in_chans: int, as_json: bool) -> None:
    """List the model zoo: attention type, parameters and MACs.

    \b
    Example:
      edgepipe models --json
    """
    # the zoo is built with torch: imported when the command runs, so --help starts at once.
    import models

    rows = []
    for name in models.names():
        model = models.create(name, in_chans=in_chans, img_size=img_size)
        info = models.model_info(name)
        rows.append(
            {
                "name": name,
                "attention": info["attention"],
                "params": models.count_params(model),
                "macs": models.count_macs(model, (1, in_chans, img_size, img_size)),
                "description": info["description"],
            }
        )
    emit({"input_shape": [1, in_chans, img_size, img_size], "models": rows}, as_json, _print_table)


def _print_table(result) -> None:
    table = Table(title=f"edgepipe model zoo (MACs at input {'x'.join(map(str, result['input_shape']))})")
    for column in ("model", "attention", "params", "MACs", "description"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for row in result["models"]:
        table.add_row(
            row["name"], row["attention"], f"{row['params']:,}", f"{row['macs'] / 1e6:.2f} M", row["description"]
        )
    out.print(table)
