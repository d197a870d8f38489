from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from apps.tenants.admin import platform_admin_site

from .models import User

admin.site.register(User, UserAdmin)
platform_admin_site.register(User, UserAdmin)
