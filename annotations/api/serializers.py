"""Input parsing and output shapes. No business logic here: views call services."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotations.models import (
    AnnotationRevision,
    ApiToken,
    AuditEvent,
    Bethesda,
    CellClass,
    Image,
    Layer,
    PresegmentStatus,
    Project,
    ProjectMembership,
    Region,
    Role,
    Split,
    TileStatus,
)
from annotations.services.regions import NAME_MAX as REGION_NAME_MAX
from annotations.services.slides import tile_geometry
from core.api.parsing import StrictSerializer
from cytoseg.slides import TILE_SUFFIX


class LoginIn(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, trim_whitespace=False)


class MembershipBrief(serializers.ModelSerializer):
    class Meta:
        model = ProjectMembership
        fields = ["project", "role"]


class MeOut(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    is_superuser = serializers.BooleanField()
    is_staff = serializers.BooleanField(help_text="Staff or superuser: may see the workers and queues.")
    memberships = MembershipBrief(many=True)


class TokenIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    project = serializers.IntegerField(required=False, allow_null=True)
    expires_in_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=3650)


class TokenOut(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "project", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]


class TokenCreatedOut(TokenOut):
    token = serializers.CharField(help_text="The secret; shown only in this response.")

    class Meta(TokenOut.Meta):
        fields = [*TokenOut.Meta.fields, "token"]


class CellClassSerializer(serializers.ModelSerializer):
    class Meta:
        model = CellClass
        fields = ["id", "name", "color", "model_label", "order"]


class CellClassIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    color = serializers.CharField(max_length=7, required=False)
    model_label = serializers.IntegerField(required=False)


class ProjectOut(serializers.ModelSerializer):
    classes = CellClassSerializer(many=True, read_only=True)
    my_role = serializers.SerializerMethodField()
    image_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "description",
            "classes",
            "experts_required",
            "quorum",
            "match_iou",
            "auto_presegment",
            "pipeline",
            "my_role",
            "image_count",
            "created_at",
        ]

    def get_my_role(self, project: Project) -> str | None:
        roles: dict[int, str] = self.context.get("roles", {})
        return roles.get(project.pk)


class ProjectClassIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    color = serializers.CharField(max_length=7, required=False, help_text="#rrggbb; a distinct default if left out.")
    model_label = serializers.ChoiceField(
        choices=[1, 2], required=False, default=1, help_text="What the models call it: 1 cell, 2 erythrocyte."
    )


class ProjectUpdateIn(StrictSerializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    experts_required = serializers.IntegerField(required=False, default=2)
    quorum = serializers.IntegerField(required=False, allow_null=True, default=None)
    match_iou = serializers.FloatField(required=False, default=0.5)
    auto_presegment = serializers.BooleanField(required=False, default=True)
    pipeline = serializers.DictField(required=False, default=dict)


class ProjectIn(ProjectUpdateIn):
    classes = ProjectClassIn(
        many=True,
        required=False,
        allow_empty=False,
        help_text="The project's cell classes (default: thyroid cell and erythrocyte).",
    )


class MembershipOut(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = ProjectMembership
        fields = ["id", "user", "username", "role", "created_at"]


class MembershipIn(serializers.Serializer):
    username = serializers.CharField(max_length=254, help_text="An existing user's username or e-mail address.")
    role = serializers.ChoiceField(choices=Role.choices)


class MembershipRoleIn(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


def _file_url(image: Image, variant: str) -> str:
    return reverse("api:image-file", kwargs={"image_id": image.pk}) + f"?variant={variant}"


class TilesOut(serializers.Serializer):
    """Where and how a tiled image's DeepZoom pyramid is served (``cytoseg.tiles``)."""

    url = serializers.CharField(help_text="Template: replace {level}, {col} and {row}.")
    tile_size = serializers.IntegerField()
    levels = serializers.IntegerField(help_text="Level levels-1 is full resolution; each level below halves it.")
    min_level = serializers.IntegerField(help_text="The coarsest level worth showing: the whole image in one tile.")
    format = serializers.CharField()


def _tiles(image: Image) -> dict[str, Any] | None:
    if not image.tiled or image.tile_status != TileStatus.DONE:
        return None
    geometry = tile_geometry(image)
    base = reverse("api:image-detail", kwargs={"image_id": image.pk})
    return {
        "url": f"{base}/tiles/{{level}}/{{col}}_{{row}}.{TILE_SUFFIX}",
        "tile_size": geometry.tile_size,
        "levels": geometry.levels,
        "min_level": geometry.single_tile_level(),
        "format": TILE_SUFFIX,
    }


class ImageOut(serializers.ModelSerializer):
    cell_count = serializers.IntegerField(read_only=True, default=None)
    thumbnail_url = serializers.SerializerMethodField()
    display_url = serializers.SerializerMethodField()
    presegment_model_label = serializers.SerializerMethodField(
        help_text="The model version of the last finished pre-segmentation (None: none)."
    )
    presegment_proposals = serializers.SerializerMethodField(
        help_text="How many proposals the last finished pre-segmentation made (None: none finished)."
    )
    presegment_tiles_done = serializers.IntegerField(
        read_only=True, help_text="A tiled image's pre-segmentation: tiles done of presegment_tiles_total."
    )
    presegment_tiles_total = serializers.IntegerField(
        read_only=True, help_text="Tiles of a tiled image's pre-segmentation (0: not tiled, or never run)."
    )
    tiles = serializers.SerializerMethodField(
        help_text="A tiled image's pyramid once built (None: not tiled, or not built yet; see tile_status)."
    )

    class Meta:
        model = Image
        fields = [
            "id",
            "project",
            "file_name",
            "width",
            "height",
            "bethesda",
            "stain",
            "magnification",
            "slide_code",
            "split",
            "status",
            "presegment_status",
            "presegment_error",
            "presegment_model",
            "presegment_model_label",
            "presegment_proposals",
            "presegment_tiles_done",
            "presegment_tiles_total",
            "revision",
            "cell_count",
            "original_format",
            "bit_depth",
            "size_bytes",
            "sha256",
            "thumbnail_url",
            "display_url",
            "tiled",
            "tile_status",
            "tile_error",
            "tiles",
            "mpp_x",
            "mpp_y",
            "objective_power",
            "created_at",
            "updated_at",
        ]

    def get_thumbnail_url(self, image: Image) -> str:
        return _file_url(image, "thumbnail")

    def get_display_url(self, image: Image) -> str:
        return _file_url(image, "display")

    @extend_schema_field(TilesOut(allow_null=True))
    def get_tiles(self, image: Image) -> dict[str, Any] | None:
        return _tiles(image)

    def get_presegment_model_label(self, image: Image) -> str | None:
        return str(image.presegment_model) if image.presegment_model_id else None

    def get_presegment_proposals(self, image: Image) -> int | None:
        if image.presegment_status != PresegmentStatus.DONE or not image.presegment_model_id:
            return None
        counted = getattr(image, "presegment_proposals", None)  # image_list annotates it
        if counted is not None:
            return int(counted)
        return image.cells.filter(layer=Layer.PROPOSAL, model_version_id=image.presegment_model_id).count()


class ImageUploadIn(serializers.Serializer):
    files = serializers.ListField(child=serializers.FileField(), help_text="One or many image files.")
    bethesda = serializers.ChoiceField(choices=Bethesda.choices, required=False)
    stain = serializers.CharField(required=False)
    magnification = serializers.CharField(required=False)
    slide_code = serializers.CharField(required=False)
    split = serializers.ChoiceField(choices=Split.choices, required=False)


class ImagePatchIn(serializers.Serializer):
    bethesda = serializers.ChoiceField(choices=Bethesda.choices, required=False, allow_blank=True)
    stain = serializers.CharField(required=False, allow_blank=True)
    magnification = serializers.CharField(required=False, allow_blank=True)
    slide_code = serializers.CharField(required=False, allow_blank=True)
    split = serializers.ChoiceField(choices=Split.choices, required=False)
    confirm_split_change = serializers.BooleanField(required=False)


class CellIn(serializers.Serializer):
    id = serializers.IntegerField(required=False, allow_null=True)
    class_id = serializers.IntegerField()
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))


class CellOut(serializers.Serializer):
    id = serializers.IntegerField()
    class_id = serializers.IntegerField()
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    layer = serializers.CharField()
    source = serializers.CharField()  # type: ignore[assignment]
    score = serializers.FloatField(allow_null=True)
    model_version = serializers.IntegerField(allow_null=True)
    author = serializers.IntegerField(allow_null=True)
    bbox = serializers.ListField(child=serializers.FloatField())
    area = serializers.FloatField()
    provenance = serializers.DictField()
    state = serializers.CharField()
    revision = serializers.IntegerField(help_text="Annotation layer: the layer's revision that last wrote this cell.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class CellsReplaceIn(serializers.Serializer):
    revision = serializers.IntegerField(required=False, help_text="Or send If-Match.")
    cells = CellIn(many=True)


class CellsOut(serializers.Serializer):
    revision = serializers.IntegerField()
    cells = CellOut(many=True)
    next_after = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="With bbox: the page was full; ask again with after=<this id> for the rest (null: no more).",
    )


class CellAddedIn(serializers.Serializer):
    class_id = serializers.IntegerField()
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))


class CellChangedIn(serializers.Serializer):
    id = serializers.IntegerField()
    revision = serializers.IntegerField(
        required=False, help_text="The cell's revision as read (checked instead of base_revision)."
    )
    class_id = serializers.IntegerField(required=False)
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), required=False)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "description": "A cell id (checked against base_revision)."},
            {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "revision": {"type": "integer"}},
                "required": ["id"],
                "description": "A cell id with the cell's revision as read (checked instead of base_revision).",
            },
        ]
    }
)
class CellDeletedField(serializers.JSONField):
    """One deleted cell as the delta service takes it: an id, or ``{id, revision}``."""


class CellsDeltaIn(serializers.Serializer):
    base_revision = serializers.IntegerField(
        required=False, help_text="The revision the delta is based on (or If-Match)."
    )
    added = CellAddedIn(many=True, required=False)
    changed = CellChangedIn(many=True, required=False)
    deleted = serializers.ListField(
        child=CellDeletedField(), required=False, help_text="Cell ids (or {id, revision} objects)."
    )


class CellsDeltaOut(serializers.Serializer):
    revision = serializers.IntegerField()
    added = CellOut(many=True, help_text="The added cells with their ids, in request order.")
    changed = CellOut(many=True)
    deleted = serializers.ListField(child=serializers.IntegerField())


class CellsDeltaConflictOut(serializers.Serializer):
    detail = serializers.CharField()
    revision = serializers.IntegerField()
    conflicts = serializers.ListField(child=serializers.DictField(), help_text="{item, id, reason, revision} each.")
    cells = CellOut(many=True, help_text="The server's current version of the cells concerned.")
    deleted = serializers.ListField(child=serializers.IntegerField(), help_text="Cells concerned that no longer exist.")


class RevisionCellOut(serializers.Serializer):
    id = serializers.IntegerField()
    class_id = serializers.IntegerField()
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))


class RevisionOut(serializers.Serializer):
    revision = serializers.IntegerField()
    cells = RevisionCellOut(many=True, help_text="The annotation layer as it was at this revision.")


class RestoreIn(serializers.Serializer):
    revision = serializers.IntegerField(required=False, help_text="Current revision (or If-Match).")


def cell_out(row: dict[str, Any]) -> dict[str, Any]:
    """The API shape of a cell row (``selectors.CELL_FIELDS``), built by hand: it is on the save path."""
    return {
        "id": row["id"],
        "class_id": row["cell_class_id"],
        "polygon": row["polygon"],
        "layer": row["layer"],
        "source": row["source"],
        "score": row["score"],
        "model_version": row["model_version_id"],
        "author": row["author_id"],
        "bbox": [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]],
        "area": row["area"],
        "provenance": row["provenance"],
        "state": row["state"],
        "revision": row["revision"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


class HistoryOut(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", default=None, read_only=True)  # type: ignore[assignment]

    class Meta:
        model = AnnotationRevision
        fields = ["revision", "author", "action", "summary", "created_at"]


class AuditOut(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)

    class Meta:
        model = AuditEvent
        fields = ["id", "project", "image", "actor", "action", "target", "before", "after", "created_at"]


class RegionOut(serializers.ModelSerializer):
    polygon = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()),
        help_text="[[x, y], ...] in full-resolution pixels.",
    )
    bbox = serializers.SerializerMethodField(help_text="[x0, y0, x1, y1]: whole pixels covering the region.")

    class Meta:
        model = Region
        fields = ["id", "image", "name", "polygon", "bbox", "status", "created_by", "created_at", "updated_at"]
        read_only_fields = fields

    def get_bbox(self, region: Region) -> list[int]:
        return list(region.crop)


class RegionIn(serializers.Serializer):
    # Shapes only: the service checks the geometry against the image and names the field.
    name = serializers.CharField(required=False, allow_blank=True, max_length=REGION_NAME_MAX)
    polygon = serializers.JSONField(help_text="[[x, y], ...]: at least 3 points inside the image, a simple polygon.")


class RegionPatchIn(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=REGION_NAME_MAX)
    polygon = serializers.JSONField(required=False)
